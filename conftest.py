"""Every test can ask for a real local server; see voiceagents.devstack.pytest_plugin."""

pytest_plugins = ["voiceagents.devstack.pytest_plugin"]
