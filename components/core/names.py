"""Names that more than one layer must agree on."""

import os

# The front door's name: its Deployment, Service and service account, and the job of its scrape
# (KEDA's wake-up query reads that job's request counter).
FRONT_DOOR_NAME = "litellm"
# The label every model server's series carry: the alias of the model they serve.
MODEL_LABEL = "model"
# Where every node has the host's model files (the minikube mount, the servers' claim).
MODELS_MOUNT = "/mnt/models"
# Set in the Pulumi Kubernetes Operator's workspace pod (its Stack's workspaceTemplate): the
# program then runs inside the cluster it manages.
IN_WORKSPACE_ENV = "LLM_PLATFORM_IN_WORKSPACE"


def in_workspace() -> bool:
    """Whether the program runs in the operator's workspace, inside the cluster."""
    return os.environ.get(IN_WORKSPACE_ENV) == "true"
