"""`bioengine-cluster` / `python -m bioengine_cluster`: run the service alone against a Hypha server."""

from ._service import ClusterService


def main() -> None:
    ClusterService.main()


if __name__ == "__main__":
    main()
