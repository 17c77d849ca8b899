"""Prefetch plans: per layer, the tar ranges a workload read, in first-read order.

Ranges are in *tar* offsets, so a plan holds for any encoding of the same tar:
a layer is matched by its blob digest or, failing that, by its diff_id.  A
plan is JSON (:data:`PLAN_MEDIA_TYPE`); a hostile one gets :class:`PlanError`."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field

from .. import errors
from ..format.tar import MAX_PLAN_RANGES
from ..oci.media import check_json_shape

PLAN_MEDIA_TYPE = "application/vnd.lazylayer.prefetch.v1+json"
ARTIFACT_TYPE = PLAN_MEDIA_TYPE  #: the ``artifactType`` of plan artifacts in a registry
PLAN_VERSION = 1
MAX_PLAN_BYTES = 64 << 20        #: a plan file or artifact larger than this is refused
# MAX_PLAN_RANGES (lazylayer.format): a plan with more ranges than this, over all layers, is refused,
# as is a TOC whose own prefetch plan has more.
MAX_PLAN_LAYERS = 4096           #: as is one with more layers than this
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_WORKLOAD = "io.lazylayer.prefetch.workload"


class PlanError(errors.FormatError):
    """A prefetch plan is malformed (or too large)."""


# ---------------------------------------------------------------------- plans


@dataclass
class LayerPlan:
    """The ranges of one layer's tar a workload read, as ``(offset, length)`` in first-read order."""

    digest: str
    diff_id: str = ""
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.ranges)


@dataclass
class Plan:
    """A prefetch plan: per layer, what to fetch first and in which order."""

    layers: list[LayerPlan] = field(default_factory=list)
    image: str = ""              #: the manifest digest of the image it was recorded on
    workload: str = ""           #: what was run (for people; not used to match)
    created: str = ""            #: RFC 3339 time of recording

    def for_layer(self, digest: str, diff_id: str = "") -> LayerPlan | None:
        """The plan of the layer with blob ``digest`` or, failing that, with ``diff_id``."""
        for lp in self.layers:
            if lp.digest == digest:
                return lp
        for lp in self.layers:
            if diff_id and lp.diff_id == diff_id:
                return lp
        return None

    def to_json(self) -> bytes:
        doc = {
            "mediaType": PLAN_MEDIA_TYPE,
            "version": PLAN_VERSION,
            "image": self.image,
            "workload": self.workload,
            "created": self.created,
            "layers": [{"digest": lp.digest, "diff_id": lp.diff_id, "ranges": [list(r) for r in lp.ranges]}
                       for lp in self.layers],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str = "prefetch plan") -> Plan:
        """Parse and check a plan; :class:`PlanError` says what is wrong with a bad one."""
        if len(data) > MAX_PLAN_BYTES:
            raise PlanError(f"{what} is {len(data)} bytes (limit {MAX_PLAN_BYTES})")
        try:
            # Before parsing: no deep nesting, no more arrays and objects than the limits allow.
            check_json_shape(data, what, 3 * MAX_PLAN_RANGES + 8 * MAX_PLAN_LAYERS + 16)
            doc = json.loads(data)
        except errors.FormatError as exc:
            raise PlanError(str(exc)) from None
        except RecursionError:
            raise PlanError(f"{what} is not JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlanError(f"{what} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("mediaType") != PLAN_MEDIA_TYPE:
            raise PlanError(f"{what} is not a lazylayer prefetch plan (mediaType should be {PLAN_MEDIA_TYPE})")
        if doc.get("version") != PLAN_VERSION:
            raise PlanError(f"{what}: version {doc.get('version')!r} is not supported (this lazylayer reads "
                            f"version {PLAN_VERSION})")
        layers, count = [], 0
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list) or len(raw_layers) > MAX_PLAN_LAYERS:
            raise PlanError(f"{what}: 'layers' is not a list of at most {MAX_PLAN_LAYERS} layers")
        for i, raw in enumerate(raw_layers):
            if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str) \
                    or not isinstance(raw.get("diff_id", ""), str) or not isinstance(raw.get("ranges"), list):
                raise PlanError(f"{what}: layer {i} is malformed (needs digest, diff_id and ranges)")
            ranges = raw["ranges"]
            count += len(ranges)
            if count > MAX_PLAN_RANGES:
                raise PlanError(f"{what} has more than {MAX_PLAN_RANGES} ranges")
            out = []
            for r in ranges:
                if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int and 0 <= x < 1 << 62 for x in r)):
                    raise PlanError(f"{what}: layer {i}: range {r!r} is not [offset, length] "
                                    "with non-negative integers")
                out.append((r[0], r[1]))
            layers.append(LayerPlan(raw["digest"], raw.get("diff_id", ""), out))
        strings = {k: doc.get(k, "") for k in ("image", "workload", "created")}
        if not all(isinstance(v, str) for v in strings.values()):
            raise PlanError(f"{what}: image, workload and created must be strings")
        return cls(layers, **strings)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan to ``path`` (atomically)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    def summary(self) -> str:
        parts = [f"layer {lp.digest[7:19]}: {len(lp.ranges)} ranges, {lp.bytes / 1e6:.1f} MB" for lp in self.layers]
        return "; ".join(parts) or "empty"


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a plan file (``-`` is not special); errors name the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the prefetch plan: {exc.strerror or exc}") from None
    return Plan.from_json(data, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
