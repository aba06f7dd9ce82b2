"""What identifying the caller costs per request, beside a reference floor.

Validates one Entra-shaped RS256 access token many times through ``shared.auth`` (a local issuer from
``tests/token_issuer.py``: after the first request the JWKS is cached, as in a warm Function App), and
prints CPU microseconds per call for:

* ``pyjwt_decode`` (reference): PyJWT's own ``jwt.decode`` with the key in hand, audience and issuer
  checked: the least any RS256 validation costs;
* ``bearer``: ``TokenValidator.principal`` (header checks, the cached key lookup, decode, the principal);
* ``easy_auth``: reading the platform's ``X-MS-CLIENT-PRINCIPAL`` (no signature: the platform checked it);
* ``request_key`` / ``request_bearer``: a GET /api/experiments through FastAPI's TestClient in key mode
  and in bearer mode, so the difference is what one request pays for the bearer check.

    python bench/auth_overhead.py [--n 2000]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from shared.api import create_api  # noqa: E402
from shared.auth import AuthSettings, Role  # noqa: E402
from shared.auth.easyauth import principal_from_header  # noqa: E402
from shared.auth.tokens import TokenValidator  # noqa: E402
from tests.control_plane import local_context  # noqa: E402
from tests.token_issuer import TokenIssuer  # noqa: E402


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """CPU microseconds per call (this process, all its threads): steadier than wall time on a shared box."""
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    n = parser.parse_args().n
    with TokenIssuer().serving() as issuer, tempfile.TemporaryDirectory() as home:
        claims = issuer.user_claims(Role.READ)
        token = issuer.token(claims)
        public = issuer.keys[list(issuer.keys)[-1]].public_key()
        settings = issuer.settings()
        validator = TokenValidator(settings)
        header = base64.b64encode(
            json.dumps(
                {
                    "auth_typ": "aad",
                    "claims": [{"typ": k, "val": str(v)} for k, v in claims.items() if k != "roles"]
                    + [{"typ": "roles", "val": "Experiments.Read"}],
                }
            ).encode()
        ).decode()
        ctx = local_context(Path(home))
        key_client = TestClient(create_api(context=ctx, auth=AuthSettings()), base_url="http://localhost")
        bearer_client = TestClient(create_api(context=ctx, auth=settings), base_url="http://localhost")
        auth = {"Authorization": f"Bearer {token}"}
        figures = {
            "pyjwt_decode": per_call_us(
                lambda: jwt.decode(
                    token, public, algorithms=["RS256"], audience=issuer.client_id, issuer=issuer.issuer
                ),
                n,
            ),
            "bearer": per_call_us(lambda: validator.principal(token), n),
            "easy_auth": per_call_us(lambda: principal_from_header(header, settings), n),
            "request_key": per_call_us(lambda: key_client.get("/api/experiments?limit=1"), n // 10),
            "request_bearer": per_call_us(lambda: bearer_client.get("/api/experiments?limit=1", headers=auth), n // 10),
        }
        print(json.dumps({name: round(us, 1) for name, us in figures.items()} | {"unit": "CPU us per call", "n": n}))


if __name__ == "__main__":
    main()
