/* json.c - a single-pass, bounded JSON pull parser (RFC 8259) for TOCs and OCI metadata.
 *
 * Why our own parser and not a library: measured on this machine for the 9.8 MB
 * TOC of a 63k-entry image, jansson 2.14 takes 295-395 ms, json-c 0.16 156-232 ms
 * and Python's json ~170 ms, all far from the 50 ms budget of building an index,
 * and each builds a whole DOM first: tens of bytes per value, on top of the text,
 * for a document of up to 8 million values.  A pull parser hands out one token
 * at a time, the TOC reader builds its compact entry records as it reads, and
 * strings are decoded in place in the (decompressed, ours) buffer, so the only
 * memory is the text itself plus the records kept.  It is ~400 lines, fuzzed
 * (csrc/fuzz/fuzz_toc.c, fuzz_manifest.c) under ASan and UBSan.
 *
 * Strictness: RFC 8259 grammar (no comments, trailing commas, single quotes,
 * leading zeros, '+' signs, bare control characters in strings); strings must be
 * valid UTF-8 (no overlong forms, no encoded surrogates, nothing past U+10FFFF);
 * \uXXXX escapes are decoded to UTF-8, surrogate pairs combined.  A lone
 * surrogate escape is refused, except U+DC80..U+DCFF, which decodes to the byte
 * 0x80..0xFF: that is how Python's surrogateescape (the converter's tar scanner)
 * writes a name that is not UTF-8, and os.fsencode() gives the same byte back.
 * The tokens NaN, Infinity and -Infinity, which Python's json reads and writes,
 * are numbers here too (flagged), so a caller can accept them exactly where
 * Python's reader does and nowhere else.  Nesting deeper than
 * LL__JSON_MAX_DEPTH and more than max_values values are refused.
 *
 * No global state; a parser is used by one thread at a time. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { EX_VALUE, EX_VALUE_OR_END, EX_KEY, EX_KEY_OR_END, EX_AFTER, EX_DONE };

/* Bytes that end a fast string scan: '"', '\\', controls and non-ASCII. */
static const uint8_t special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

void ll__set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (!err || err_size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

void ll__show(char *dst, size_t dst_size, const void *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *p = s;
    size_t o = 0;
    if (dst_size == 0) return;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (o + 8 >= dst_size) {   /* room for "\xNN" and "..." */
            if (o + 4 <= dst_size) memcpy(dst + o, "...", 3), o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') dst[o++] = (char)c;
        else {
            dst[o++] = '\\'; dst[o++] = 'x';
            dst[o++] = hex[c >> 4]; dst[o++] = hex[c & 15];
        }
    }
    dst[o] = 0;
}

int ll__digest_ok(const char *s, size_t len) {
    if (len != 71 || memcmp(s, "sha256:", 7) != 0) return 0;
    for (size_t i = 7; i < 71; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

void ll__json_init(ll__json *j, uint8_t *buf, size_t len, uint64_t max_values) {
    memset(j, 0, sizeof *j);
    j->start = j->p = buf;
    j->end = buf + len;
    j->expect = EX_VALUE;
    j->max_values = max_values;
}

int ll__json_fail(ll__json *j, int status, const char *fmt, ...) {
    if (j->status == LL_OK) {
        j->status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->msg, sizeof j->msg, fmt, ap);
        va_end(ap);
    }
    return j->status;
}

static int syntax(ll__json *j, const uint8_t *at, const char *what) {
    ll__json_fail(j, LL_ERR_FORMAT, "invalid JSON at byte %zu: %s", (size_t)(at - j->start), what);
    return LL__J_ERROR;
}

static int hex4(const uint8_t *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), 0 if invalid. */
static size_t utf8_seq(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;   /* no encoded surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;   /* nothing past U+10FFFF */
    } else return 0;
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* A string starting at j->p (the opening quote), decoded in place. */
static int parse_string(ll__json *j, ll__jtok *t) {
    uint8_t *p = j->p + 1, *end = j->end;
    uint8_t *out = p, *begin = p;
    for (;;) {
        uint8_t *seg = p;
#ifdef __SSE2__
        {   /* 16 bytes at a time: stop at '"', '\\', a control byte or a non-ASCII byte */
            const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
            while (end - p >= 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)p);
                __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                           _mm_cmplt_epi8(v, space));   /* signed: also every byte >= 0x80 */
                unsigned m = (unsigned)_mm_movemask_epi8(hit);
                if (m) {
                    p += __builtin_ctz(m);
                    break;
                }
                p += 16;
            }
        }
#endif
        while (p < end && !special[*p]) p++;
        if (out != seg) memmove(out, seg, (size_t)(p - seg));
        out += p - seg;
        if (p >= end) return syntax(j, begin - 1, "unterminated string");
        uint8_t c = *p;
        if (c == '"') break;
        if (c == '\\') {
            if (end - p < 2) return syntax(j, p, "unterminated string");
            uint8_t e = p[1];
            switch (e) {
            case '"': *out++ = '"'; p += 2; continue;
            case '\\': *out++ = '\\'; p += 2; continue;
            case '/': *out++ = '/'; p += 2; continue;
            case 'b': *out++ = '\b'; p += 2; continue;
            case 'f': *out++ = '\f'; p += 2; continue;
            case 'n': *out++ = '\n'; p += 2; continue;
            case 'r': *out++ = '\r'; p += 2; continue;
            case 't': *out++ = '\t'; p += 2; continue;
            case 'u': break;
            default: return syntax(j, p, "invalid escape in a string");
            }
            uint32_t u;
            if (end - p < 6 || !hex4(p + 2, &u)) return syntax(j, p, "invalid \\u escape");
            uint8_t *at = p;
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                uint32_t lo;
                if (end - p >= 6 && p[0] == '\\' && p[1] == 'u' && hex4(p + 2, &lo) && lo >= 0xDC00 &&
                    lo <= 0xDFFF) {
                    p += 6;
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                } else return syntax(j, at, "lone surrogate escape (a high surrogate without its pair)");
            } else if (u >= 0xDC00 && u <= 0xDFFF) {
                if (u < 0xDC80) return syntax(j, at, "lone surrogate escape");
                *out++ = (uint8_t)(u - 0xDC00);   /* surrogateescape: the raw byte */
                continue;
            }
            if (u < 0x80) *out++ = (uint8_t)u;
            else if (u < 0x800) {
                *out++ = (uint8_t)(0xC0 | (u >> 6));
                *out++ = (uint8_t)(0x80 | (u & 0x3F));
            } else if (u < 0x10000) {
                *out++ = (uint8_t)(0xE0 | (u >> 12));
                *out++ = (uint8_t)(0x80 | ((u >> 6) & 0x3F));
                *out++ = (uint8_t)(0x80 | (u & 0x3F));
            } else {
                *out++ = (uint8_t)(0xF0 | (u >> 18));
                *out++ = (uint8_t)(0x80 | ((u >> 12) & 0x3F));
                *out++ = (uint8_t)(0x80 | ((u >> 6) & 0x3F));
                *out++ = (uint8_t)(0x80 | (u & 0x3F));
            }
            continue;
        }
        if (c < 0x20) return syntax(j, p, "control character in a string");
        size_t n = utf8_seq(p, end);
        if (n == 0) return syntax(j, p, "invalid UTF-8 in a string");
        if (out != p) memmove(out, p, n);
        out += n;
        p += n;
    }
    /* out <= p: the NUL lands on bytes already read (at worst the closing quote). */
    t->s = begin;
    t->len = (size_t)(out - begin);
    *out = 0;
    j->p = p + 1;
    return LL__J_STR;
}

static int parse_number(ll__json *j, ll__jtok *t) {
    uint8_t *p = j->p, *end = j->end, *start = p;
    int flags = 0;
    if (*p == '-') {
        flags |= LL__JN_NEG;
        p++;
    }
    if (p < end && *p == 'I') {
        if (end - p >= 8 && memcmp(p, "Infinity", 8) == 0) {
            p += 8;
            flags |= LL__JN_INF;
            goto done;
        }
        return syntax(j, start, "invalid literal");
    }
    if (p >= end) return syntax(j, start, "invalid number");
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else return syntax(j, start, "invalid number");
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return syntax(j, start, "invalid number (no digit after '.')");
        while (p < end && *p >= '0' && *p <= '9') p++;
        flags |= LL__JN_FRAC;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return syntax(j, start, "invalid number (bad exponent)");
        while (p < end && *p >= '0' && *p <= '9') p++;
        flags |= LL__JN_EXP;
    }
done:
    t->s = start;
    t->len = (size_t)(p - start);
    t->num = flags;
    j->p = p;
    return LL__J_NUM;
}

static int literal(ll__json *j, const char *word, size_t n, int type) {
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return syntax(j, j->p, "invalid literal");
    j->p += n;
    return type;
}

static inline void skip_ws(ll__json *j) {
    uint8_t *p = j->p, *end = j->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    j->p = p;
}

static inline int top_is_object(const ll__json *j) {
    return j->depth > 0 && ((j->objs >> (j->depth - 1)) & 1);
}

static int after_value(ll__json *j, int type) {
    j->expect = j->depth ? EX_AFTER : EX_DONE;
    return type;
}

int ll__json_next(ll__json *j, ll__jtok *t) {
    if (j->status != LL_OK) return LL__J_ERROR;
again:
    skip_ws(j);
    t->off = (size_t)(j->p - j->start);
    t->num = 0;
    t->s = NULL;
    t->len = 0;
    if (j->expect == EX_DONE) {
        if (j->p != j->end) return syntax(j, j->p, "extra data after the JSON value");
        return t->type = LL__J_EOF;
    }
    if (j->p >= j->end) return t->type = syntax(j, j->p, "unexpected end of input");
    uint8_t c = *j->p;
    switch (j->expect) {
    case EX_AFTER:
        if (c == ',') {
            j->p++;
            j->expect = top_is_object(j) ? EX_KEY : EX_VALUE;
            goto again;
        }
        if (c == (top_is_object(j) ? '}' : ']')) {
            int type = top_is_object(j) ? LL__J_OBJ_END : LL__J_ARR_END;
            j->p++;
            j->depth--;
            return t->type = after_value(j, type);
        }
        return t->type = syntax(j, j->p, top_is_object(j) ? "expected ',' or '}'" : "expected ',' or ']'");
    case EX_KEY_OR_END:
        if (c == '}') {
            j->p++;
            j->depth--;
            return t->type = after_value(j, LL__J_OBJ_END);
        }
        /* fall through */
    case EX_KEY:
        if (c != '"') return t->type = syntax(j, j->p, "expected a string key");
        if (parse_string(j, t) < 0) return t->type = LL__J_ERROR;
        skip_ws(j);
        if (j->p >= j->end || *j->p != ':') return t->type = syntax(j, j->p, "expected ':'");
        j->p++;
        j->expect = EX_VALUE;
        return t->type = LL__J_KEY;
    case EX_VALUE_OR_END:
        if (c == ']') {
            j->p++;
            j->depth--;
            return t->type = after_value(j, LL__J_ARR_END);
        }
        /* fall through */
    default:
        break;
    }
    /* a value */
    if (++j->values > j->max_values) {
        ll__json_fail(j, LL_ERR_LIMIT, "more than %llu JSON values (at byte %zu)",
                      (unsigned long long)j->max_values, t->off);
        return t->type = LL__J_ERROR;
    }
    int type;
    switch (c) {
    case '{':
    case '[':
        if (j->depth >= LL__JSON_MAX_DEPTH) {
            ll__json_fail(j, LL_ERR_FORMAT, "invalid JSON at byte %zu: nested more than %d deep", t->off,
                          LL__JSON_MAX_DEPTH);
            return t->type = LL__J_ERROR;
        }
        j->p++;
        if (c == '{') j->objs |= (uint64_t)1 << j->depth;
        else j->objs &= ~((uint64_t)1 << j->depth);
        j->depth++;
        j->expect = c == '{' ? EX_KEY_OR_END : EX_VALUE_OR_END;
        return t->type = c == '{' ? LL__J_OBJ : LL__J_ARR;
    case '"': type = parse_string(j, t); break;
    case 't': type = literal(j, "true", 4, LL__J_TRUE); break;
    case 'f': type = literal(j, "false", 5, LL__J_FALSE); break;
    case 'n': type = literal(j, "null", 4, LL__J_NULL); break;
    case 'N':
        type = literal(j, "NaN", 3, LL__J_NUM);
        if (type == LL__J_NUM) {
            t->s = j->p - 3;
            t->len = 3;
            t->num = LL__JN_NAN;
        }
        break;
    default:
        if (c == '-' || (c >= '0' && c <= '9') || c == 'I') type = parse_number(j, t);
        else type = syntax(j, j->p, "expected a value");
    }
    if (type < 0) return t->type = LL__J_ERROR;
    return t->type = after_value(j, type);
}

int ll__json_skip(ll__json *j, const ll__jtok *t) {
    if (t->type != LL__J_OBJ && t->type != LL__J_ARR) return j->status;
    unsigned depth = j->depth - 1;
    ll__jtok tok;
    while (j->depth > depth) {
        if (ll__json_next(j, &tok) == LL__J_ERROR) return j->status;
    }
    return LL_OK;
}

int ll__json_int(const ll__jtok *t, ll__jint *v) {
    if (t->type != LL__J_NUM || (t->num & ~LL__JN_NEG)) return 0;
    const uint8_t *p = t->s, *end = t->s + t->len;
    v->neg = *p == '-';
    if (v->neg) p++;
    uint64_t mag = 0, low = 0;
    int big = 0;
    for (; p < end; p++) {
        unsigned d = (unsigned)(*p - '0');
        low = low * 10 + d;   /* wraps: the low 64 bits */
        if (!big) {
            if (mag > (UINT64_MAX - d) / 10) big = 1, mag = UINT64_MAX;
            else mag = mag * 10 + d;
        }
    }
    v->mag = mag;
    v->big = big;
    v->low = v->neg ? (uint64_t)0 - low : low;
    if (v->neg && mag == 0) v->neg = 0;   /* -0 is 0 */
    return 1;
}

int ll__json_time(const ll__jtok *t, int64_t max_sec, int64_t *sec, uint32_t *nsec) {
    if (t->type != LL__J_NUM) return 0;
    *sec = 0;
    *nsec = 0;
    if (t->num & LL__JN_NAN) return 1;
    if (t->num & LL__JN_INF) {
        if (!(t->num & LL__JN_NEG)) *sec = max_sec;
        return 1;
    }
    /* Digits d_1..d_n (leading zeros dropped) and where the point goes: the value is
     * 0.d_1 d_2 ... d_n x 10^point. */
    const uint8_t *p = t->s, *end = t->s + t->len;
    int neg = *p == '-';
    if (neg) p++;
    const uint8_t *digits[2] = {NULL, NULL};   /* integer part, fraction */
    size_t dlen[2] = {0, 0};
    digits[0] = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    dlen[0] = (size_t)(p - digits[0]);
    if (p < end && *p == '.') {
        digits[1] = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        dlen[1] = (size_t)(p - digits[1]);
    }
    int64_t exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (*p == '+' || *p == '-') eneg = *p++ == '-';
        for (; p < end; p++) {
            if (exp < 100000000) exp = exp * 10 + (*p - '0');
        }
        if (eneg) exp = -exp;
    }
    /* Skip leading zeros over both parts. */
    int64_t point = (int64_t)dlen[0];   /* digits before the point, counted from the first digit */
    size_t part = 0, i = 0;
    while (part < 2) {
        if (i >= dlen[part]) { part++; i = 0; continue; }
        if (digits[part][i] != '0') break;
        i++;
        point--;
    }
    if (part == 2) return 1;   /* zero (also -0.0) */
    if (neg) return 1;          /* negative: clamped to 0 */
    point += exp;
    if (point > 19) {           /* >= 10^19: past any limit */
        *sec = max_sec;
        return 1;
    }
    if (point <= -9) return 1;  /* below a nanosecond */
    /* Significant digit k is worth d_k x 10^(point - k): positions 1..point make the
     * seconds, the next nine the nanoseconds (missing digits are zeros). */
    uint64_t sv = 0, ns = 0;
    for (int64_t k = 1, last = point + 9; k <= last; k++) {
        unsigned d = 0;
        while (part < 2 && i >= dlen[part]) { part++; i = 0; }
        if (part < 2) d = (unsigned)(digits[part][i++] - '0');
        if (k <= point) sv = sv * 10 + d;
        else ns = ns * 10 + d;
    }
    if (sv > (uint64_t)max_sec || (sv == (uint64_t)max_sec && ns > 0)) {
        *sec = max_sec;
        return 1;
    }
    *sec = (int64_t)sv;
    *nsec = (uint32_t)ns;
    return 1;
}

uint64_t ll__json_count_values(const uint8_t *s, size_t len, uint64_t *objects) {
    uint64_t values = 1, objs = 0;
    size_t i = 0;
#ifdef __SSE2__
    {   /* 16 bytes at a time, per-byte counters summed every 255 blocks */
        const __m128i lb = _mm_set1_epi8('['), lc = _mm_set1_epi8('{'), cm = _mm_set1_epi8(','), zero = _mm_setzero_si128();
        while (len - i >= 16) {
            __m128i av = zero, ao = zero;
            for (int k = 0; k < 255 && len - i >= 16; k++, i += 16) {
                __m128i x = _mm_loadu_si128((const __m128i *)(s + i));
                __m128i o = _mm_cmpeq_epi8(x, lc);
                av = _mm_sub_epi8(av, _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, lb), o), _mm_cmpeq_epi8(x, cm)));
                ao = _mm_sub_epi8(ao, o);
            }
            __m128i sv = _mm_sad_epu8(av, zero), so = _mm_sad_epu8(ao, zero);
            values += (uint64_t)_mm_cvtsi128_si32(sv) + (uint64_t)_mm_cvtsi128_si32(_mm_srli_si128(sv, 8));
            objs += (uint64_t)_mm_cvtsi128_si32(so) + (uint64_t)_mm_cvtsi128_si32(_mm_srli_si128(so, 8));
        }
    }
#endif
    for (; i < len; i++) {
        uint8_t c = s[i];
        values += (c == '[') + (c == '{') + (c == ',');
        objs += c == '{';
    }
    if (objects) *objects = objs;
    return values;
}
