// estargz_gen writes an eStargz (or stargz's zstd:chunked) layer blob from a tar, with the
// reference library itself (github.com/containerd/stargz-snapshotter/estargz, Debian's
// golang-github-containerd-stargz-snapshotter-dev), so the tests read what the peers write.
//
//	estargz_gen [-zstdchunked] [-chunk BYTES] [-level N] [-prioritized a,b] IN.tar OUT.blob
//
// It prints one JSON object: the layer's annotations (the TOC digest, and for zstd:chunked
// the manifest checksum and position) and its diff_id.
// Built by the test fixtures offline: GO111MODULE=off GOPATH=DIR:/usr/share/gocode go build.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	kzstd "github.com/klauspost/compress/zstd"
)

// unset: no -level given (gzip's 0 means "store", so it cannot be the default).
const unset = -100

// zstdCompression pairs stargz's zstd:chunked compressor and decompressor (as its own converter does).
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

func main() {
	zstd := flag.Bool("zstdchunked", false, "write zstd:chunked (stargz's dialect) instead of eStargz")
	chunk := flag.Int("chunk", 0, "chunk size in bytes (0: the library's default, 4 MiB)")
	level := flag.Int("level", unset, "compression level (gzip: 0 stores, 9 is the library's default; zstd: 3)")
	prio := flag.String("prioritized", "", "comma-separated files to put first, ending at the landmark")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: estargz_gen [-zstdchunked] [-chunk BYTES] [-level N] [-prioritized a,b] IN.tar OUT.blob")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), flag.Arg(1), *zstd, *chunk, *level, *prio); err != nil {
		fmt.Fprintln(os.Stderr, "estargz_gen:", err)
		os.Exit(1)
	}
}

func run(in, out string, zstd bool, chunk, level int, prio string) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	var opts []estargz.Option
	if chunk > 0 {
		opts = append(opts, estargz.WithChunkSize(chunk))
	}
	ann := map[string]string{}
	if zstd {
		// klauspost's levels: SpeedDefault (1 of its 4) is about zstd's level 3.
		zl := 3
		if level != unset {
			zl = level
		}
		opts = append(opts, estargz.WithCompression(zstdCompression{&zstdchunked.Compressor{
			CompressionLevel: kzstd.EncoderLevelFromZstd(zl),
			Metadata:         ann,
		}, &zstdchunked.Decompressor{}}))
	} else if level != unset {
		opts = append(opts, estargz.WithCompressionLevel(level))
	}
	if prio != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(prio, ",")))
	}
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		return err
	}
	o, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(o, blob); err != nil {
		return err
	}
	if err := blob.Close(); err != nil {
		return err
	}
	if err := o.Close(); err != nil {
		return err
	}
	ann[estargz.TOCJSONDigestAnnotation] = blob.TOCDigest().String()
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"annotations": ann,
		"diff_id":     blob.DiffID().String(),
	})
}
