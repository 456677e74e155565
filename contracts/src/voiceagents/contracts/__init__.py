"""Every message that crosses a Voice Agents service boundary, and the NATS names they use.

Rules (docs/architecture.md): Structs are frozen and keyword-only; new fields get defaults; a
field's type never changes; unknown fields are accepted so older consumers read newer messages.
"""
