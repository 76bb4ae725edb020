# cfgdiff on Ray's official image, installed from this working tree.
#   CPU:  docker build -t REGISTRY/cfgdiff:0.1.0 .
#   CUDA: docker build -t REGISTRY/cfgdiff:0.1.0-gpu --build-arg BASE=rayproject/ray:2.60.0-py311-gpu \
#                      --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# The Ray version of the base must match the `ray` pin in pyproject.toml (tests/unit/test_deploy.py checks it);
# KubeRay pods and `ray up` nodes run this image (cluster/deploy/).
ARG BASE=rayproject/ray:2.60.0-py311
FROM ${BASE}

# torch first, from the index that matches the base (CPU wheels by default; a CUDA index for the -gpu base)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir "torch>=2.4" --index-url ${TORCH_INDEX}

WORKDIR /home/ray/cfgdiff
COPY --chown=ray:users pyproject.toml README.md LICENSE ./
COPY --chown=ray:users cfgdiff ./cfgdiff
COPY --chown=ray:users cluster ./cluster
COPY --chown=ray:users cli ./cli
COPY --chown=ray:users configs ./configs
# ray is already in the image at the pinned version: pip keeps it; the formats extra reads users' files
RUN pip install --no-cache-dir ".[formats]" && cfgdiff --version

# the object store and NCCL need a large /dev/shm: run with --shm-size=8g (docker) or a memory emptyDir (k8s)
ENV RAY_USAGE_STATS_ENABLED=0
