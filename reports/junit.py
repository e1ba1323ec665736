"""junit.xml: the run's cases for CI dashboards, one <testcase> per case.

pytest's --junitxml would also list the suite's own tests and knows nothing of verdicts; this
file is written from the same records as verdicts.json, with each case's numbers as properties.
Outcomes follow pytest's own JUnit mapping: an expected fail is <skipped type="pytest.xfail">,
an inconclusive case is <skipped>, a strict XPASS is a <failure>. Characters XML 1.0 cannot
hold (control characters in a name from YAML, say) are written as visible \\xNN escapes, so the
file stays well-formed whatever the names.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

from .labels import verdict_label as label

PROPERTIES = ("verdict", "unverified", "expected", "baseline", "statistic", "value", "effect", "p", "q", "seed")


def to_junit(run: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    kinds = Counter(_result(case)[0] for case in cases)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="st-hypotheses", tests=str(len(cases)),
                          failures=str(kinds["failure"]), errors=str(kinds["error"]), skipped=str(kinds["skipped"]),
                          time=f"{sum(c.get('seconds') or 0 for c in cases):.3f}",
                          timestamp=str(run.get("started", "")), hostname=str(run.get("device", "")))
    for case in cases:
        suite.append(_testcase(case))
    for element in suites.iter():
        element.attrib = {key: xml_safe(value) for key, value in element.attrib.items()}
        element.text = xml_safe(element.text) if element.text else element.text
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 forbids (and DEL) written as a visible \\xNN escape."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _testcase(case: dict[str, Any]) -> ET.Element:
    element = ET.Element("testcase", classname=f"hypotheses.{case['hypothesis']}", name=case["case_id"],
                         time=f"{case.get('seconds') or 0:.3f}")
    properties = ET.SubElement(element, "properties")
    for key in PROPERTIES:
        value = label(case) if key == "verdict" else case.get(key)
        if value is not None:
            ET.SubElement(properties, "property", name=key, value=str(value))
    kind, kind_type, message = _result(case)
    if kind:
        outcome = ET.SubElement(element, kind, message=message[:1000])
        if kind_type:
            outcome.set("type", kind_type)
        outcome.text = f"{case.get('claim', '')}\n{message}"
    return element


def _result(case: dict[str, Any]) -> tuple[str | None, str | None, str]:
    """(element, type, message) of a case; element None for a pass."""
    verdict, outcome, reason = case["verdict"], case.get("outcome"), case.get("reason") or ""
    if outcome == "xpassed-strict":
        return "failure", None, f"[XPASS(strict)] expected {case.get('expected')}, but: {reason}"
    if outcome == "exploratory":          # no known answer: reported, never a failure (as pytest ran it)
        return None, None, f"exploratory ({label(case)}): {reason}"
    if verdict == "fail" and outcome == "xfailed":
        return "skipped", "pytest.xfail", f"expected fail: {reason}"
    if verdict == "fail":
        return "failure", None, reason
    if verdict == "inconclusive":
        return "skipped", "pytest.skip", f"inconclusive: {reason}"
    if verdict == "error":
        return "error", None, reason
    return None, None, reason
