"""The LSUV report (``lsuv/report.py``): one record per layer and per slice of a stacked
layer, in execution order, statuses from the fitting codes, and its table."""

import types

import numpy as np

from flaxinit.lsuv.fitting import INFEASIBLE, NOT_CONVERGED, OK, STATUS_NAMES
from flaxinit.lsuv.report import LayerFit, LSUVReport, build_report


def fit(status, var_after, scale, *, rounds=1):
    """One layer's fit arrays as the program returns them (scalars, or one per slice)."""
    status = np.asarray(status)
    return {
        "status": status,
        "var_before": np.full(status.shape, 0.5),
        "var_after": np.asarray(var_after, dtype=np.float64),
        "scale": np.asarray(scale, dtype=np.float64),
        "shift": np.zeros(status.shape),
        "rounds": np.full(status.shape, rounds),
    }


LAYERS = [
    types.SimpleNamespace(name="inp", kind="Dense"),
    types.SimpleNamespace(name="layers/fc", kind="Dense"),
    types.SimpleNamespace(name="head", kind="Dense"),
]
FITS = [
    fit(OK, 1.0, 1.5),
    fit([OK, NOT_CONVERGED], [1.0, 0.7], [2.0, 3.0], rounds=2),  # a stack of two layers
    fit(INFEASIBLE, 0.2, 1.0, rounds=0),
]


def test_one_record_per_layer_and_slice_in_order():
    report = build_report(LAYERS, FITS, 1.0, 0.1, "output")
    assert isinstance(report, LSUVReport)
    assert [r.path for r in report] == ["inp", "layers/fc[0]", "layers/fc[1]", "head"]
    assert [r.order for r in report] == [0, 1, 2, 3]
    assert [r.scale for r in report] == [1.5, 2.0, 3.0, 1.0]
    assert [r.status for r in report] == [
        STATUS_NAMES[OK],
        STATUS_NAMES[OK],
        STATUS_NAMES[NOT_CONVERGED],
        STATUS_NAMES[INFEASIBLE],
    ]
    assert [r.converged for r in report] == [True, True, False, False]
    assert not report.converged
    assert [r.path for r in report.flagged] == ["layers/fc[1]", "head"]
    assert report.layers == report.records
    assert isinstance(report[0], LayerFit)
    assert len(report) == 4


def test_table_has_a_title_a_header_and_a_row_per_record():
    report = build_report(LAYERS, FITS, 1.0, 0.1, "activation")
    lines = str(report).splitlines()
    assert lines[0] == "LSUV (activation): target variance 1 +- 0.1, 4 layers, 2 flagged"
    assert lines[1].split() == [
        "#", "layer", "kind", "var", "before", "var", "after", "scale", "rounds", "status"
    ]  # fmt: skip
    assert set(lines[2].replace(" ", "")) == {"-"}
    assert len(lines) == 3 + len(report)
    assert lines[5].split()[:2] == ["2", "layers/fc[1]"]  # title, header, dashes, then records
    assert lines[5].endswith("not converged")


def test_a_converged_report_flags_nothing():
    report = build_report(LAYERS[:1], FITS[:1], 1.0, 0.1, "output")
    assert report.converged
    assert report.flagged == ()
