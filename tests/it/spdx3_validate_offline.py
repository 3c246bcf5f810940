#!/usr/bin/env python3
"""Run the PyPI `spdx3-validate` (JSON Schema plus SHACL) on SPDX 3.0.1 files, offline.

spdx3-validate downloads the SPDX 3.0.1 JSON Schema and SHACL model, and rdflib downloads
the JSON-LD context, from spdx.org on every run. This wrapper serves those three URLs from a
local folder instead (and refuses any other URL), checking each file's sha256 first, then
calls spdx3-validate's own command-line entry point unchanged.

Usage: spdx3_validate_offline.py MODEL_DIR FILE.spdx.json...
MODEL_DIR holds spdx-context.jsonld, spdx-model.ttl and spdx-json-schema.json of SPDX 3.0.1
(schemas/spdx-3.0.1/ in this repository; its README says where they come from).
Exit status and output are spdx3-validate's; 3 when a model file is missing or differs.
"""

import email.message
import hashlib
import io
import sys
import urllib.error
import urllib.request
import urllib.response
from pathlib import Path

# The published SPDX 3.0.1 files: URL -> (file name, content type, sha256).
SERVED = {
    "https://spdx.org/rdf/3.0.1/spdx-context.jsonld": (
        "spdx-context.jsonld",
        "application/ld+json",
        "c72b0928f094c83e5c127784edb1ebca2af74a104fcacc007c332b23cbc788bd",
    ),
    "https://spdx.org/rdf/3.0.1/spdx-model.ttl": (
        "spdx-model.ttl",
        "text/turtle",
        "1e6df676d5a4108de90362170b0933da53f929ae8147453cea0dffadb804fae5",
    ),
    "https://spdx.org/schema/3.0.1/spdx-json-schema.json": (
        "spdx-json-schema.json",
        "application/json",
        "59f59713c7d73ff0d833f4f468df974a689fc9dd36dc5510f1875ff85d276c54",
    ),
}


def load(model_dir):
    files = {}
    for url, (name, ctype, digest) in SERVED.items():
        path = model_dir / name
        try:
            data = path.read_bytes()
        except OSError as e:
            print(f"spdx3_validate_offline: cannot read `{path}`: {e}", file=sys.stderr)
            sys.exit(3)
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            print(
                f"spdx3_validate_offline: `{path}` has sha256 {got}, expected {digest}",
                file=sys.stderr,
            )
            sys.exit(3)
        files[url] = (data, ctype)
    return files


class Local(urllib.request.BaseHandler):
    """Answers the SPDX URLs from memory; any other URL is an error, never a download."""

    handler_order = 100  # before the default HTTP(S) handlers

    def __init__(self, files):
        self.files = files

    def _open(self, req):
        url = req.full_url.split("#", 1)[0]
        if url not in self.files:
            raise urllib.error.URLError(f"offline validation: no local copy of {url}")
        data, ctype = self.files[url]
        headers = email.message.Message()
        headers["Content-Type"] = ctype
        resp = urllib.response.addinfourl(io.BytesIO(data), headers, url, 200)
        resp.msg = "OK"
        return resp

    def http_open(self, req):
        return self._open(req)

    def https_open(self, req):
        return self._open(req)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    files = load(Path(sys.argv[1]))
    urllib.request.install_opener(urllib.request.build_opener(Local(files)))
    from spdx3_validate.main import main as validate

    args = ["--quiet"]
    for f in sys.argv[2:]:
        args += ["--json", f]
    return validate(args)


if __name__ == "__main__":
    sys.exit(main())
