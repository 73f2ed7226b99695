"""Peewee models, one module per aggregate. Tables are created by migrations, not by models."""

from zenthor.models.approval import ToolApproval
from zenthor.models.channel_account import ChannelAccount
from zenthor.models.conversation import Contact, Conversation, Message
from zenthor.models.inbound import InboundDedupe
from zenthor.models.job import AgentJob
from zenthor.models.outbound import OutboundMessage
from zenthor.models.plugin_status import PluginStatus
from zenthor.models.sweep import SweepState

__all__ = [
    "AgentJob",
    "ChannelAccount",
    "Contact",
    "Conversation",
    "InboundDedupe",
    "Message",
    "OutboundMessage",
    "PluginStatus",
    "SweepState",
    "ToolApproval",
]
