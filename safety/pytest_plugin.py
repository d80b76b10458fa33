"""pytest hooks that register the ``req`` marker and copy it into the JUnit XML.

``tests/conftest.py`` imports these two hooks. For each test carrying ``@pytest.mark.req(...)``
the JUnit ``<testcase>`` gets one ``req`` property per requirement ID, its node id
(``req_nodeid``) and the digest of its file (``req_source``), which ``av safety trace`` reads
back (:func:`safety.verification.read_junit`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safety.verification import PROP_DIGEST, PROP_NODE, PROP_REQ, file_digest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): the safety requirement IDs this test verifies (av safety trace)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    digests: dict[Path, str] = {}
    for item in items:
        ids = [i for m in item.iter_markers("req") for i in m.args]
        if not ids:
            continue
        path = Path(item.path)
        if path not in digests:
            digests[path] = file_digest(path)
        item.user_properties.extend((PROP_REQ, i) for i in dict.fromkeys(ids))
        item.user_properties.append((PROP_NODE, item.nodeid))
        item.user_properties.append((PROP_DIGEST, digests[path]))
