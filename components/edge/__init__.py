"""The edge: how clients reach the models — the front door (one OpenAI base URL, the keys), its
virtual keys' database, the gateway (routes, TLS), model routing (the ingress streams the tokens of
served models itself), the inference pools (a vLLM model's replicas chosen by load) and the chat UI
delivered by Argo CD. `files/` holds what runs inside
workloads (LiteLLM's custom auth, the ingress's key check), not Pulumi code."""

from components.edge.database import KeysDatabase, KeysDatabaseArgs
from components.edge.front_door import FrontDoor, FrontDoorArgs
from components.edge.gateway import Backend, Gateway, GatewayArgs
from components.edge.inference_pool import InferencePools, InferencePoolsArgs
from components.edge.model_routing import ModelRouting, ModelRoutingArgs
from components.edge.ui_admin import UiAdmin, UiAdminArgs

__all__ = [
    "Backend", "FrontDoor", "FrontDoorArgs", "Gateway", "GatewayArgs", "InferencePools", "InferencePoolsArgs",
    "KeysDatabase", "KeysDatabaseArgs", "ModelRouting", "ModelRoutingArgs", "UiAdmin", "UiAdminArgs",
]
