"""A workspace's agent base class on memshift: the module the migration guide's new
import names (``shared.templates.enhanced_agent_base_postgres``). The memory calls come
from ``MemoryMixin``; the backend is whatever ``self.config`` says."""

from memshift import AgentConfig, MemoryMixin

__all__ = ["AgentConfig", "EnhancedAgentBase"]


class EnhancedAgentBase(MemoryMixin):
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
