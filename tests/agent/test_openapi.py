"""docs/openapi.yaml describes exactly the routes the Klein app serves."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from vrtwist.agent.rest import PortApi

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.yaml")


class OpenApiTests(SynchronousTestCase):
    def test_paths_and_methods_match_the_app(self) -> None:
        with open(DOC) as f:
            text = f.read()
        documented: set[tuple[str, str]] = set()
        path = None
        for line in text.splitlines():
            m = re.match(r"^  (/\S*):$", line)
            if m:
                path = m.group(1)
                continue
            m = re.match(r"^    (get|post|put|delete):", line)
            if m and path:
                documented.add((m.group(1).upper(), path))
        served: set[tuple[str, str]] = set()
        for rule in PortApi.app.url_map.iter_rules():
            p = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    served.add((method, p))
        self.assertEqual(documented, served)
