"""`bioengine-apps` / `python -m bioengine_apps`: run the service alone against a Hypha server."""

from ._service import AppsService


def main() -> None:
    AppsService.main()


if __name__ == "__main__":
    main()
