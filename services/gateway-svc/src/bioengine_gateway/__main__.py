"""`bioengine-gateway` / `python -m bioengine_gateway`: run the service alone against a Hypha server."""

from ._service import GatewayService


def main() -> None:
    GatewayService.main()


if __name__ == "__main__":
    main()
