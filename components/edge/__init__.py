"""The edge: how clients reach the models — the front door (one OpenAI base URL, the keys), its
virtual keys' database, the gateway (routes, TLS) and the chat UI delivered by Argo CD.
`files/` holds what runs inside the front door (LiteLLM's custom auth), not Pulumi code."""

from components.edge.database import KeysDatabase, KeysDatabaseArgs
from components.edge.front_door import FrontDoor, FrontDoorArgs
from components.edge.gateway import Backend, Gateway, GatewayArgs
from components.edge.ui_admin import UiAdmin, UiAdminArgs

__all__ = [
    "Backend", "FrontDoor", "FrontDoorArgs", "Gateway", "GatewayArgs", "KeysDatabase", "KeysDatabaseArgs",
    "UiAdmin", "UiAdminArgs",
]
