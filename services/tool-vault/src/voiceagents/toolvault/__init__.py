"""tool-vault: tool secrets, released only to voice workers on a live call; OAuth connect and
refresh."""
