"""Where an experiment's trace can be opened: Application Insights' end-to-end transaction view, whose
operation id is the W3C trace id. The deployment names its component in ``RAPIDS_HPO_APPINSIGHTS_ID`` (its
resource id; infra/ sets it); without one there is no link, only the trace id to search for.

The portal's deep-link form (``TransactionDetailsV2Blade`` with the component and the operation id) is
the portal's own, not a documented API, and cannot be opened from here: a changed form costs a dead link,
never a wrong page of another component."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from shared.config import env
from shared.telemetry.traceparent import trace_id_of

_COMPONENT = re.compile(
    r"/subscriptions/([0-9a-fA-F-]{36})/resourceGroups/([\w.()-]{1,90})/providers/Microsoft\.Insights/components/([\w.()-]{1,260})",
    re.IGNORECASE,
)


def transaction_link(traceparent: str | None, component_id: str | None = None) -> str | None:
    """The portal link to the trace of ``traceparent`` in the deployment's component, or None."""
    trace_id = trace_id_of(traceparent)
    component = _COMPONENT.fullmatch(component_id if component_id is not None else env("RAPIDS_HPO_APPINSIGHTS_ID"))
    if trace_id is None or component is None:
        return None
    subscription, group, name = component.groups()
    component_json = json.dumps({"SubscriptionId": subscription, "ResourceGroup": group, "Name": name})
    model = json.dumps({"eventId": trace_id})
    return (
        "https://portal.azure.com/#blade/AppInsightsExtension/TransactionDetailsV2Blade"
        f"/ComponentId/{quote(component_json, safe='')}/DataModel/{quote(model, safe='')}"
    )
