#!/usr/bin/env bash
# Start a BioEngine worker in slurm mode on an HPC login node, inside Apptainer.
#
# Usage: infra/slurm/start-worker.sh [options] [--] [bioengine-worker arguments...]
#
# Runs `bioengine-worker --mode slurm ARGS` inside `apptainer exec IMAGE`. The Ray head and the
# services run in the container on this login node; Ray workers are SLURM jobs that the cluster
# service submits with the host's sbatch. So the container gets, bound from the host:
#   - the SLURM client commands (sbatch squeue scancel sacct sinfo scontrol), the libraries they
#     and their plugins load (libslurm, libmunge) and SLURM's plugin directory,
#   - the SLURM configuration (/etc/slurm, or the directory of $SLURM_CONF),
#   - munge's socket directory (/run/munge), for SLURM's authentication,
#   - the workspace directory, at the same path (job scripts and logs refer to it, and compute
#     nodes see it at that path on the shared filesystem).
#
# Options:
#   --image PATH          the image (default: $BIOENGINE_WORKER_IMAGE, else
#                         <workspace-dir>/images/ray-worker.sif, built from
#                         infra/apptainer/ray-worker.def, which holds the whole worker: the
#                         tested OCI image, saved by infra/apptainer/save-images.sh)
#   --workspace-dir DIR   the worker's state, logs and job files (default: $BIOENGINE_WORKSPACE_DIR,
#                         else ~/.bioengine); must be on a filesystem the compute nodes share
#   --apptainer BIN       apptainer or singularity (default: whichever is on PATH)
#   --bind SRC[:DST]      one more bind mount (repeatable)
#   --dry-run             print the apptainer command (the token is never printed) and exit
#   -h, --help            this text
#
# Everything else (or everything after --) goes to bioengine-worker, e.g.
#   --server-url https://hypha.aicell.io --workspace my-ws --head-address 10.1.2.3
# The token comes from the environment variable BIOENGINE_TOKEN (never from the command line,
# where `ps` would show it) and is handed to the container through APPTAINERENV_BIOENGINE_TOKEN.
#
# The Ray cluster runs behind its own token, <workspace-dir>/ray/auth_token (mode 0600, created by
# the cluster service; --ray-token-file to choose another file): the Ray workers in SLURM jobs
# read it by path from the shared workspace dir, never from their environment or job script.
#
# Needs a container glibc at least as new as the host's (the host's SLURM binaries run inside).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}
die() {
    echo "start-worker: $*" >&2
    exit 1
}

IMAGE="${BIOENGINE_WORKER_IMAGE:-}"
WORKSPACE_DIR="${BIOENGINE_WORKSPACE_DIR:-$HOME/.bioengine}"
APPTAINER=""
DRY_RUN=0
EXTRA_BINDS=()
WORKER_ARGS=()

while [ "$#" -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --image)
            [ "$#" -ge 2 ] || die "--image needs a value"
            IMAGE="$2"
            shift 2
            ;;
        --image=*)
            IMAGE="${1#*=}"
            shift
            ;;
        --workspace-dir)
            [ "$#" -ge 2 ] || die "--workspace-dir needs a value"
            WORKSPACE_DIR="$2"
            shift 2
            ;;
        --workspace-dir=*)
            WORKSPACE_DIR="${1#*=}"
            shift
            ;;
        --apptainer)
            [ "$#" -ge 2 ] || die "--apptainer needs a value"
            APPTAINER="$2"
            shift 2
            ;;
        --apptainer=*)
            APPTAINER="${1#*=}"
            shift
            ;;
        --bind)
            [ "$#" -ge 2 ] || die "--bind needs a value"
            EXTRA_BINDS+=("$2")
            shift 2
            ;;
        --bind=*)
            EXTRA_BINDS+=("${1#*=}")
            shift
            ;;
        --dry-run)
            DRY_RUN=1
            shift
            ;;
        --)
            shift
            WORKER_ARGS+=("$@")
            break
            ;;
        *)
            WORKER_ARGS+=("$1")
            shift
            ;;
    esac
done

for arg in "${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"}"; do
    case "$arg" in
        --mode | --mode=*) die "--mode is always slurm here; drop it" ;;
        --token | --token=*) die "pass the token in the BIOENGINE_TOKEN environment variable, not as a flag" ;;
        --workspace-dir | --workspace-dir=*) die "use this script's own --workspace-dir (it is bound into the container)" ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# What to run with
# ---------------------------------------------------------------------------------------------
if [ -z "$APPTAINER" ]; then
    if command -v apptainer >/dev/null 2>&1; then
        APPTAINER=apptainer
    elif command -v singularity >/dev/null 2>&1; then
        APPTAINER=singularity
    else
        die "neither apptainer nor singularity is on PATH (try 'module load apptainer')"
    fi
fi
command -v "$APPTAINER" >/dev/null 2>&1 || die "$APPTAINER not found"

WORKSPACE_DIR="${WORKSPACE_DIR/#\~/$HOME}"
mkdir -p "$WORKSPACE_DIR"
WORKSPACE_DIR="$(cd "$WORKSPACE_DIR" && pwd -P)"
IMAGE="${IMAGE:-$WORKSPACE_DIR/images/ray-worker.sif}"
if [ ! -e "$IMAGE" ] && [[ "$IMAGE" != *://* ]]; then
    die "image $IMAGE not found: build it with 'apptainer build $IMAGE infra/apptainer/ray-worker.def' (from the archive infra/apptainer/save-images.sh writes) or pass --image"
fi

# ---------------------------------------------------------------------------------------------
# Binds
# ---------------------------------------------------------------------------------------------
BINDS=()
add_bind() {
    # $1 host path, $2 container path (default: the same); skips what does not exist
    local src="$1" dst="${2:-$1}"
    [ -e "$src" ] || return 0
    local entry="$src:$dst"
    local existing
    for existing in "${BINDS[@]+"${BINDS[@]}"}"; do
        [ "$existing" = "$entry" ] && return 0
    done
    BINDS+=("$entry")
}

SLURM_COMMANDS=(sbatch squeue scancel sacct sinfo scontrol)
found=0
for name in "${SLURM_COMMANDS[@]}"; do
    if path="$(command -v "$name" 2>/dev/null)"; then
        add_bind "$(readlink -f "$path")" "/usr/local/bin/$name"
        found=$((found + 1))
    fi
done
[ "$found" -gt 0 ] || die "no SLURM client commands (sbatch, squeue, ...) on PATH: is this a SLURM login node?"
command -v sbatch >/dev/null 2>&1 || die "sbatch is not on PATH"

# The shared libraries of the SLURM commands and of the munge auth plugin, at the same paths.
PLUGIN_DIR="$(scontrol show config 2>/dev/null | awk -F' = ' '/^PluginDir/ {print $2; exit}' || true)"
libs_of() {
    ldd "$1" 2>/dev/null | awk '/=> \// {print $3}' | grep -E '/lib(slurm|munge)[^/]*$' || true
}
for name in "${SLURM_COMMANDS[@]}"; do
    path="$(command -v "$name" 2>/dev/null)" || continue
    while IFS= read -r lib; do
        [ -n "$lib" ] || continue
        # inside the plugin directory (bound whole below): nothing to add
        [ -n "$PLUGIN_DIR" ] && [[ "$lib" == "${PLUGIN_DIR%%:*}"/* ]] && continue
        add_bind "$(readlink -f "$lib")" "$lib"
    done < <(libs_of "$path")
done
if [ -n "$PLUGIN_DIR" ]; then
    for dir in ${PLUGIN_DIR//:/ }; do
        add_bind "$dir"
        for plugin in "$dir"/auth_munge.so "$dir"/cred_munge.so; do
            [ -e "$plugin" ] || continue
            while IFS= read -r lib; do
                [ -n "$lib" ] && add_bind "$(readlink -f "$lib")" "$lib"
            done < <(libs_of "$plugin")
        done
    done
fi

# Configuration and munge's socket.
if [ -n "${SLURM_CONF:-}" ]; then
    add_bind "$(dirname "$SLURM_CONF")"
fi
add_bind /etc/slurm
add_bind /etc/slurm-llnl
# (/var/run is a link to /run on current systems: bind one of the two, not both.)
if [ -d /run/munge ]; then
    add_bind /run/munge
elif [ -d /var/run/munge ]; then
    add_bind "$(readlink -f /var/run/munge)" /run/munge
fi
# /etc/passwd, /etc/group, /etc/hosts and /etc/localtime: Apptainer binds them by default.

add_bind "$WORKSPACE_DIR"
for entry in "${EXTRA_BINDS[@]+"${EXTRA_BINDS[@]}"}"; do
    BINDS+=("$entry")
done

# ---------------------------------------------------------------------------------------------
# Environment (the token never appears on a command line)
# ---------------------------------------------------------------------------------------------
pass_env() {
    # $1 name: hand the host's value to the container, if set
    local name="$1"
    if [ -n "${!name+x}" ]; then
        export "APPTAINERENV_$name=${!name}" "SINGULARITYENV_$name=${!name}"
    fi
}
if [ -z "${BIOENGINE_TOKEN:-}" ]; then
    echo "start-worker: BIOENGINE_TOKEN is not set: without --server-url the worker starts its own" \
        "Hypha server on loopback" >&2
fi
# (RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH are not handed over: the cluster service sets them itself.)
for name in BIOENGINE_TOKEN USER LOGNAME SLURM_CONF; do
    pass_env "$name"
done
export APPTAINERENV_PREPEND_PATH=/usr/local/bin SINGULARITYENV_PREPEND_PATH=/usr/local/bin

CMD=("$APPTAINER" exec --cleanenv)
for entry in "${BINDS[@]}"; do
    CMD+=(--bind "$entry")
done
CMD+=("$IMAGE" bioengine-worker --mode slurm --workspace-dir "$WORKSPACE_DIR")
CMD+=("${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"}")

if [ "$DRY_RUN" -eq 1 ]; then
    printf '%q ' "${CMD[@]}"
    echo
    echo "# environment handed over: $(env | grep -o '^APPTAINERENV_[A-Z_]*' | sort | tr '\n' ' ')"
    exit 0
fi

echo "start-worker: $APPTAINER exec $IMAGE bioengine-worker --mode slurm (workspace $WORKSPACE_DIR," \
    "${#BINDS[@]} binds)" >&2
exec "${CMD[@]}"
