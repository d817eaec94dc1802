from stn.utils.checks import ConfigError, check_config

__all__ = ["ConfigError", "check_config"]
