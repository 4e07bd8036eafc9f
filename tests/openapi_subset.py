"""A subset of a service's published OpenAPI document (MoyKlass', Twilio's), as the fakes and the
conformance tests read it: the operations the client uses, cut from the spec unchanged."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


class SpecSubset:
    def __init__(self, path: Path, service: str):
        self.document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.service = service

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow `$ref`, a JSON pointer into the subset (sometimes into another schema's properties)."""
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def operation_for(self, method: str, path: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The spec's operation for a request, and its path parameters' values as sent; LookupError
        for a request the spec does not declare."""
        for template, operations in self.document["paths"].items():
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            match = re.fullmatch(pattern, path)
            if match and method.lower() in operations:
                return operations[method.lower()], match.groupdict()
        raise LookupError(f"{method} {path} is no operation of the {self.service} spec")
