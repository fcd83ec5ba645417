"""Container HEALTHCHECK: exit 0 when the exporter's /healthz answers 200, else 1.

The image has no curl; this uses the standard library only. /healthz needs no basic auth.
With TLS on, set CARBON_EXPORTER_HEALTHCHECK_URL=https://127.0.0.1:9875/healthz: the
certificate is not verified, because this only ever talks to its own process on loopback.
"""

import os
import ssl
import sys
import urllib.request

URL = os.environ.get("CARBON_EXPORTER_HEALTHCHECK_URL", "http://127.0.0.1:9875/healthz")


def main() -> int:
    context = ssl._create_unverified_context()  # loopback, our own certificate
    try:
        with urllib.request.urlopen(URL, timeout=3, context=context) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
        print(f"unhealthy: {URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
