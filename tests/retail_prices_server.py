"""A local stand-in for the Azure Retail Prices API: serves pages in the API's documented response format.

The real API (``https://prices.azure.com/api/retail/prices``) cannot be reached here. This server answers
``GET /api/retail/prices?$filter=...`` with ``{"BillingCurrency", "CustomerEntityId", "CustomerEntityType",
"Items", "NextPageLink", "Count"}`` pages cut from a response file (``tests/data/retail-prices.json``),
keeps only the items the filter names, and links the pages with ``$skip`` as the API does. The file's items
have the API's item format and every kind of meter it returns (an older meter, Spot, Low Priority, Windows,
Reservation, DevTest); its figures are test values, not a capture.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RESPONSE_FILE = Path(__file__).parent / "data" / "retail-prices.json"


def _filtered(items: list[dict[str, Any]], odata: str) -> list[dict[str, Any]]:
    region = re.search(r"armRegionName eq '([^']+)'", odata)
    skus = set(re.findall(r"armSkuName eq '([^']+)'", odata))
    return [
        item
        for item in items
        if (region is None or item["armRegionName"] == region.group(1)) and (not skus or item["armSkuName"] in skus)
    ]


@contextmanager
def retail_prices_server(page_size: int = 3, items: list[dict[str, Any]] | None = None) -> Iterator[Any]:
    """Serve the response file; yields an object with ``url`` (the API's path) and ``requests`` (paths seen)."""
    all_items = items if items is not None else json.loads(RESPONSE_FILE.read_text())["Items"]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            seen.append(self.path)
            if parsed.path != "/api/retail/prices":
                self.send_error(404)
                return
            query = urllib.parse.parse_qs(parsed.query)
            odata = query.get("$filter", [""])[0]
            skip = int(query.get("$skip", ["0"])[0])
            matching = _filtered(all_items, odata)
            page = matching[skip : skip + page_size]
            following = None
            if skip + page_size < len(matching):
                following = f"http://127.0.0.1:{self.server.server_port}/api/retail/prices?" + urllib.parse.urlencode(
                    {"$filter": odata, "$skip": skip + page_size}, quote_via=urllib.parse.quote
                )
            body = json.dumps(
                {
                    "BillingCurrency": "USD",
                    "CustomerEntityId": "Default",
                    "CustomerEntityType": "Retail",
                    "Items": page,
                    "NextPageLink": following,
                    "Count": len(page),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    class Running:
        url = f"http://127.0.0.1:{server.server_port}/api/retail/prices"
        requests = seen

    try:
        yield Running()
    finally:
        server.shutdown()
        server.server_close()
