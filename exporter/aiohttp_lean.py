"""Imports aiohttp without the system tables it loads for clients and file serving. Imported
first by the command line's module.

aiohttp's client module builds two SSL contexts when first imported, each loading the system
CA store: 2.3 MB of the daemon's memory and 50 ms of its start, for contexts no client here
uses. The HTTP clients here build their own context where they need one (the providers' and
the retraining query's session: `providers.chain.client_session`; the kubelet's; urllib's).
Imported with no CA store named, aiohttp's contexts stay empty, so a client left on them fails
verification rather than passing unchecked. Its file responses load the system's MIME type
files (/etc/mime.types: 0.4 MB) for static files the exporter never serves; Python's built-in
table is kept.

The environment is process-wide: this runs once, at the import of the command line's module,
before any thread is started; a library import (embedded mode, in a user's process) never
comes here, and aiohttp already imported is left alone.
"""

from __future__ import annotations

import mimetypes
import os
import sys

_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def import_lean() -> None:
    if "aiohttp" in sys.modules:
        return
    saved = {name: os.environ.get(name) for name in _CA_VARIABLES}
    os.environ.update(dict.fromkeys(_CA_VARIABLES, os.devnull))
    files, mimetypes.knownfiles = mimetypes.knownfiles, []
    try:
        import aiohttp.web  # noqa: F401
    finally:
        mimetypes.knownfiles = files
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


import_lean()
