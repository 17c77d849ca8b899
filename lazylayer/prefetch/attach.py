"""Plans kept next to the image: OCI artifacts that refer to it (docs/referrers.md), and TOC plans."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import errors, oci
from .plan import (
    ANNOTATION_CREATED,
    ANNOTATION_WORKLOAD,
    ARTIFACT_TYPE,
    PLAN_MEDIA_TYPE,
    LayerPlan,
    Plan,
    PlanError,
    _now,
)

if TYPE_CHECKING:
    from ..image import Image

log = logging.getLogger("lazylayer")

# ---------------------------------------------------------------- attaching


def _artifact_store(image: Image) -> oci.ArtifactStore | None:
    """Where artifacts referring to ``image`` live: its registry repository or OCI layout (else None)."""
    return image.source.artifacts()


def attach(image: Image, plan: Plan) -> oci.Descriptor:
    """Store ``plan`` in the image's registry (or OCI layout) as an artifact that refers to the image."""
    from ..registry import referrers

    store = _artifact_store(image)
    if store is None:
        raise PlanError(f"{image.reference}: plans can be attached only to images in a registry or an OCI "
                        "layout; write it to a file instead (lazylayer record -o FILE)")
    subject = dict(image.manifest_image.manifest_descriptor)
    subject.pop("platform", None)
    subject.pop("annotations", None)
    annotations = {ANNOTATION_CREATED: plan.created or _now()}
    if plan.workload:
        annotations[ANNOTATION_WORKLOAD] = plan.workload[:200]
    return referrers.attach(store, subject, ARTIFACT_TYPE, plan.to_json(), PLAN_MEDIA_TYPE, annotations)


def find_attached(image: Image) -> Plan | None:
    """The newest plan attached to the image as an artifact, else one built from the layers' TOCs.

    Returns None when there is neither.  A registry that cannot be asked (no
    referrers, no permission) counts as "no artifact"; a malformed artifact
    raises :class:`PlanError`.
    """
    from ..registry import referrers

    found: list[oci.Descriptor] = []
    store = _artifact_store(image)
    if image.digest and store is not None:
        try:
            found = referrers.find(store, image.digest, ARTIFACT_TYPE)
        except (errors.NotFoundError, errors.AuthError) as exc:
            log.debug("%s: no plan artifacts: %s", image.reference, exc)
    if found and store is not None:
        newest = max(found, key=lambda d: (d.get("annotations") or {}).get(ANNOTATION_CREATED, ""))
        data = referrers.read_payload(store, newest, PLAN_MEDIA_TYPE)
        plan = Plan.from_json(data, f"prefetch plan {newest.get('digest')}")
        log.info("%s: using the prefetch plan attached as %s (%s)", image.reference, newest.get("digest"),
                 plan.summary())
        return plan
    layers = [LayerPlan(layer.digest, "", [(int(o), int(n)) for o, n in layer.toc.prefetch])
              for layer in image.layers if layer.toc.prefetch]
    if layers:
        log.info("%s: using the prefetch plans in the layers' TOCs", image.reference)
        return Plan(layers, image=image.digest)
    return None
