"""ReqIF 1.2 export of the safety records, for assessors' requirement tools.

One SPEC-OBJECT per hazard, safety goal and requirement (attributes ID, Title, Text, ASIL, Kind,
Rationale), SPEC-RELATIONS for "refines" (child -> parent), "addresses" (goal/requirement ->
hazard) and "verified-by" (requirement -> a test, monitor or metric, kept as a string attribute
"Verification"), and one SPECIFICATION whose hierarchy follows hazard -> goal -> requirement.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from safety.trace import Trace

NS = "http://www.omg.org/spec/ReqIF/20110401/reqif.xsd"
_ATTRS = ("ID", "Title", "Text", "ASIL", "Kind", "Rationale", "Verification")


def _id(*parts: str) -> str:
    return "_" + hashlib.sha1("/".join(parts).encode()).hexdigest()[:20]


def _sub(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    return ET.SubElement(parent, tag, {k.replace("_", "-"): v for k, v in attrs.items()})


def to_reqif(trace: Trace, title: str = "av safety requirements", now: datetime | None = None) -> bytes:
    """The ReqIF XML document (UTF-8 bytes) of ``trace``'s records and verifications."""
    now = now or datetime.now(timezone.utc)
    stamp = now.replace(microsecond=0).isoformat()
    root = ET.Element("REQ-IF", {"xmlns": NS})
    header = _sub(_sub(root, "THE-HEADER"), "REQ-IF-HEADER", IDENTIFIER=_id("header"))
    for tag, text in (("CREATION-TIME", stamp), ("REQ-IF-TOOL-ID", "av safety trace"),
                      ("REQ-IF-VERSION", "1.0"), ("SOURCE-TOOL-ID", "av"), ("TITLE", title)):
        _sub(header, tag).text = text
    content = _sub(_sub(root, "CORE-CONTENT"), "REQ-IF-CONTENT")
    dtype = _id("datatype", "string")
    _sub(_sub(content, "DATATYPES"), "DATATYPE-DEFINITION-STRING", IDENTIFIER=dtype, LONG_NAME="String",
         LAST_CHANGE=stamp, MAX_LENGTH="100000")
    types = _sub(content, "SPEC-TYPES")
    otype = _id("type", "object")
    ot = _sub(types, "SPEC-OBJECT-TYPE", IDENTIFIER=otype, LONG_NAME="Safety record", LAST_CHANGE=stamp)
    defs = _sub(ot, "SPEC-ATTRIBUTES")
    for a in _ATTRS:
        d = _sub(defs, "ATTRIBUTE-DEFINITION-STRING", IDENTIFIER=_id("attr", a), LONG_NAME=a, LAST_CHANGE=stamp)
        _sub(_sub(d, "TYPE"), "DATATYPE-DEFINITION-STRING-REF").text = dtype
    rtypes = {k: _id("reltype", k) for k in ("refines", "addresses")}
    for k, ident in rtypes.items():
        _sub(types, "SPEC-RELATION-TYPE", IDENTIFIER=ident, LONG_NAME=k, LAST_CHANGE=stamp)
    stype = _id("type", "specification")
    _sub(types, "SPECIFICATION-TYPE", IDENTIFIER=stype, LONG_NAME="Safety specification", LAST_CHANGE=stamp)

    r = trace.records
    objects = _sub(content, "SPEC-OBJECTS")
    items = [("hazard", h) for h in r.hazards] + [("goal", g) for g in r.goals] + [("requirement", q) for q in r.requirements]
    for kind, item in items:
        o = _sub(objects, "SPEC-OBJECT", IDENTIFIER=_id("obj", item.id), LONG_NAME=item.id, LAST_CHANGE=stamp)
        _sub(_sub(o, "TYPE"), "SPEC-OBJECT-TYPE-REF").text = otype
        values = _sub(o, "VALUES")
        ver = "; ".join(f"{trace.verifications[i].kind}:{trace.verifications[i].id} ({trace.verifications[i].status})"
                        for i in trace.forward.get(item.id, []))
        for a, v in zip(_ATTRS, (item.id, item.title, item.text, str(item.asil), kind,
                                 getattr(item, "rationale", ""), ver)):
            av_ = _sub(values, "ATTRIBUTE-VALUE-STRING", THE_VALUE=v)
            _sub(_sub(av_, "DEFINITION"), "ATTRIBUTE-DEFINITION-STRING-REF").text = _id("attr", a)
    relations = _sub(content, "SPEC-RELATIONS")

    def relate(kind: str, src: str, dst: str) -> None:
        rel = _sub(relations, "SPEC-RELATION", IDENTIFIER=_id("rel", kind, src, dst), LAST_CHANGE=stamp)
        _sub(_sub(rel, "TYPE"), "SPEC-RELATION-TYPE-REF").text = rtypes[kind]
        _sub(_sub(rel, "SOURCE"), "SPEC-OBJECT-REF").text = _id("obj", src)
        _sub(_sub(rel, "TARGET"), "SPEC-OBJECT-REF").text = _id("obj", dst)

    known = set(r.by_id)
    for q in r.requirements:
        if q.parent in known:
            relate("refines", q.id, q.parent)
    for item in (*r.goals, *r.requirements):
        for h in item.hazards:
            if h in known:
                relate("addresses", item.id, h)
    spec = _sub(_sub(content, "SPECIFICATIONS"), "SPECIFICATION", IDENTIFIER=_id("spec"), LONG_NAME=title,
                LAST_CHANGE=stamp)
    _sub(_sub(spec, "TYPE"), "SPECIFICATION-TYPE-REF").text = stype
    top = _sub(spec, "CHILDREN")

    def node(parent: ET.Element, rid: str, path: str) -> ET.Element:
        h = _sub(parent, "SPEC-HIERARCHY", IDENTIFIER=_id("hier", path), LAST_CHANGE=stamp)
        _sub(_sub(h, "OBJECT"), "SPEC-OBJECT-REF").text = _id("obj", rid)
        return h

    def children(parent: ET.Element, rid: str, path: str) -> None:
        kids = [q for q in r.requirements if q.parent == rid]
        if kids:
            box = _sub(parent, "CHILDREN")
            for q in kids:
                children(node(box, q.id, f"{path}/{q.id}"), q.id, f"{path}/{q.id}")

    for g in r.goals:
        children(node(top, g.id, g.id), g.id, g.id)
    for q in r.requirements:
        if q.parent is None:
            node(top, q.id, q.id)
    for h in r.hazards:
        node(top, h.id, h.id)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
