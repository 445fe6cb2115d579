"""The LSUV report: one record per fitted layer (per slice of a stacked layer)."""

from __future__ import annotations

import dataclasses

import numpy as np

from flaxinit.lsuv.fitting import INFEASIBLE, OK, STATUS_NAMES, ZERO_VARIANCE
from flaxinit.tables import RecordTable


@dataclasses.dataclass(frozen=True)
class LayerFit:
    """What LSUV did to one layer.

    Attributes:
      path: the module's path, with ``[i]`` for slice ``i`` of a stacked layer.
      order: its position in execution order.
      kind: the module's class name.
      var_before: the output variance on the batch before rescaling.
      var_after: the output variance after (what the next layer saw).
      scale: the factor folded into the kernel.
      shift: the amount added to the bias (mean centring; 0 otherwise).
      rounds: the rescaling rounds used.
      converged: ``|var_after - target| < tol``.
      status: ``ok``, ``not converged``, or why the layer was left unchanged.
    """

    path: str
    order: int
    kind: str
    var_before: float
    var_after: float
    scale: float
    shift: float
    rounds: int
    converged: bool
    status: str


@dataclasses.dataclass(frozen=True)
class LSUVReport(RecordTable[LayerFit]):
    """The per-layer records in execution order (a sequence); ``str()`` gives a table.

    Attributes:
      records: one :class:`LayerFit` per fitted layer (per slice of a stacked layer).
      target_var: the target variance.
      tol: the tolerance on it.
      measure: ``"output"`` or ``"activation"``.
    """

    target_var: float
    tol: float
    measure: str

    right = (0, 3, 4, 5, 6)

    @property
    def layers(self) -> tuple[LayerFit, ...]:
        """The records (as ``records``)."""
        return self.records

    @property
    def converged(self) -> bool:
        """Whether every layer reached the target within tol."""
        return all(r.converged for r in self.records)

    @property
    def flagged(self) -> tuple[LayerFit, ...]:
        """Layers that did not converge or were left unchanged."""
        return tuple(r for r in self.records if r.status != STATUS_NAMES[OK])

    def title(self) -> str:
        return (
            f"LSUV ({self.measure}): target variance {self.target_var:g} +- {self.tol:g}, "
            f"{len(self.records)} layers, {len(self.flagged)} flagged"
        )

    def headers(self) -> list[str]:
        return ["#", "layer", "kind", "var before", "var after", "scale", "rounds", "status"]

    def row(self, r: LayerFit) -> list[str]:
        return [
            str(r.order),
            r.path,
            r.kind,
            f"{r.var_before:.4g}",
            f"{r.var_after:.4g}",
            f"{r.scale:.4g}",
            str(r.rounds),
            r.status,
        ]


def build_report(layers, fits, target_var, tol, measure) -> LSUVReport:
    """Turns per-layer fit arrays (scalars, or one entry per stacked slice) into records."""
    records = []
    order = 0
    for info, fit in zip(layers, fits, strict=True):
        values = {k: np.asarray(v) for k, v in fit.items()}
        stacked = values["scale"].ndim > 0
        for index in np.ndindex(values["scale"].shape):
            suffix = "".join(f"[{i}]" for i in index) if stacked else ""
            status = int(values["status"][index])
            var_after = float(values["var_after"][index])
            records.append(
                LayerFit(
                    path=info.name + suffix,
                    order=order,
                    kind=info.kind,
                    var_before=float(values["var_before"][index]),
                    var_after=var_after,
                    scale=float(values["scale"][index]),
                    shift=float(values["shift"][index]),
                    rounds=int(values["rounds"][index]),
                    converged=status == OK,
                    status=STATUS_NAMES[status],
                )
            )
            order += 1
    return LSUVReport(tuple(records), float(target_var), float(tol), measure)


__all__ = ["INFEASIBLE", "ZERO_VARIANCE", "LSUVReport", "LayerFit", "build_report"]
