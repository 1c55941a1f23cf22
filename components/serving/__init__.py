"""The serving layer: the model servers (one per model, or llama.cpp's router for all), the
runtime table they are built from, their namespace's policies and their autoscaling."""

from components.serving.autoscaling import PodAutoscaling, PodAutoscalingArgs, ScaledServer
from components.serving.llama_router import LlamaRouter, LlamaRouterArgs
from components.serving.llm_server import LlmServer, LlmServerArgs
from components.serving.model_namespace import ModelNamespace, ModelNamespaceArgs
from components.serving.pods import ServingSettings
from components.serving.team import Team, TeamArgs

__all__ = [
    "LlamaRouter", "LlamaRouterArgs", "LlmServer", "LlmServerArgs", "ModelNamespace", "ModelNamespaceArgs",
    "PodAutoscaling", "PodAutoscalingArgs", "ScaledServer", "ServingSettings", "Team", "TeamArgs",
]
