"""`make catalog`: what an admin sees of the built-in tools without a running stack, exactly as
the worker reports it to the registry."""

from __future__ import annotations

import msgspec
import pytest

from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.worker.tools.builtin.google_calendar import EVENTS_SCOPE, FREEBUSY_SCOPE
from voiceagents.worker.tools.print_catalog import catalog_json

pytestmark = pytest.mark.unit


def test_the_catalog_lists_every_built_in_tool_with_scopes_per_function() -> None:
    tools = {t.name: t for t in msgspec.json.decode(catalog_json(), type=list[PlatformToolSpec])}

    assert {"google_calendar", "crm", "shop", "call_control"} <= set(tools)
    calendar = tools["google_calendar"]
    assert (calendar.auth_type, calendar.oauth_provider) == ("oauth2", "google")
    scopes = {f.name: f.oauth_scopes for f in calendar.functions}
    # tool-vault asks only for the scopes of the functions an agent enables.
    assert scopes == {
        "check_availability": [FREEBUSY_SCOPE],
        "create_event": [EVENTS_SCOPE],
        "update_event": [EVENTS_SCOPE],
        "delete_event": [EVENTS_SCOPE],
    }
    assert calendar.config_schema["properties"]["calendar_id"]["default"] == "primary"
    create = next(f for f in calendar.functions if f.name == "create_event")
    assert create.parameters["required"] == ["summary", "start_time"]
    assert create.redact_arguments == ["attendee_email"]
    assert not create.idempotent
    assert (tools["crm"].auth_type, tools["shop"].auth_type) == ("api_key", "api_key")
    assert tools["call_control"].auth_type == "none"
