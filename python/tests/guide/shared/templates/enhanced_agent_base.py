"""The module the migration guide's old import names: the same class, deprecated."""

import warnings

from .enhanced_agent_base_postgres import AgentConfig, EnhancedAgentBase

__all__ = ["AgentConfig", "EnhancedAgentBase"]

warnings.warn(
    "shared.templates.enhanced_agent_base is deprecated; import "
    "shared.templates.enhanced_agent_base_postgres",
    DeprecationWarning,
    stacklevel=2,
)
