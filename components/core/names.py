"""Names that more than one layer must agree on."""

# The front door's name: its Deployment, Service and service account, and the job of its scrape
# (KEDA's wake-up query reads that job's request counter).
FRONT_DOOR_NAME = "litellm"
# The label every model server's series carry: the alias of the model they serve.
MODEL_LABEL = "model"
# Where every node has the host's model files (the minikube mount, the servers' claim).
MODELS_MOUNT = "/mnt/models"
