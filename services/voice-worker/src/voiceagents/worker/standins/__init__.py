"""Stand-ins for the remote, paid APIs the built-in tools call: Google Calendar, a Zendesk-style
CRM, a Shopify-style shop, HubSpot-style contacts (leads), and Twilio's REST API.

These are NOT the real services. Each is a small local HTTP server that speaks the documented
subset of its API that the tools use (same paths, bodies, auth headers and error shapes), so the
tools' production code runs unchanged against them: only the base URL differs. Tests and
`make demo` (the calendar) use them because the real services are unreachable from here.
"""
