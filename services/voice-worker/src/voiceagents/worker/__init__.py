"""Voice worker: the LiveKit Agents worker where a caller meets the agent."""
