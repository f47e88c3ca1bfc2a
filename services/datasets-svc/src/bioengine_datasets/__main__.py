"""`bioengine-datasets` / `python -m bioengine_datasets`: run the service alone against a Hypha server."""

from ._service import DatasetsService


def main() -> None:
    DatasetsService.main()


if __name__ == "__main__":
    main()
