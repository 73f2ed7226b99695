"""The agent turn: model client, context, tools, approvals, and the replies it writes."""
