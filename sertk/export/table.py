"""The stage-8 student table: one row per model with its deployment figures and CCCs.

``students_table(rows)`` takes ``(name, protocol, metrics)`` triples of stage-8
regression results (the metrics the distill task writes) and returns a markdown
table; rows without ``params`` (e.g. the teacher) show only their CCCs. The
report (stage 11) calls it for regression sections that have student results.
"""
from __future__ import annotations

DIMS = ("arousal", "valence", "dominance")
HEADER = ["model", "protocol", "params", "MMACs/s", "int8 KB", "peak RAM MB", "RTF (1 thread)",
          "CCC A/V/D vs teacher", "CCC A/V/D vs human", "int8 CCC loss"]


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _avd(d: dict | None) -> str:
    if not d:
        return "-"
    return " / ".join(_f(d.get(k), ".3f") for k in DIMS)


def has_students(metrics_list) -> bool:
    return any("ccc_teacher" in m for m in metrics_list)


def students_table(rows: list[tuple[str, str, dict]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, protocol, m in rows:
        macs = m.get("macs_per_s")
        cells = [name, protocol, _f(m.get("params"), ",d"), _f(None if macs is None else macs / 1e6, ".1f"),
                 _f(m.get("onnx_int8_kb"), ".1f"), _f(m.get("peak_ram_mb"), ".1f"), _f(m.get("rtf_1thread"), ".4f"),
                 _avd(m.get("ccc_teacher")), _avd(m.get("ccc")), _f(m.get("int8_ccc_loss"), "+.4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nStudents are scored as int8 ONNX models (onnxruntime, one CPU thread); "
                               "'int8 CCC loss' is the fp32 model's mean CCC vs the teacher minus the int8 one's.")
