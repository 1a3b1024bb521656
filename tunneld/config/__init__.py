"""Configuration: YAML in (parse.py), frozen dataclasses out (model.py);
wg-quick configs in (wgquick.py). The names callers use, in one place."""

from tunneld.config.model import (IFNAMSIZ, LOG_LEVELS, Config, ConfigError, EncryptionConfig, Hooks,  # noqa: F401
                                  InterfaceConfig, Keys, RunAs, encryption_overhead, stem)
from tunneld.config.parse import (KEYS, MAX_CONFIG_BYTES, Key, decode_key, is_low_order, load, parse,  # noqa: F401
                                  read_bounded, refuse_root)
from tunneld.conn.endpoint import Endpoint, TransportConfig, is_ip  # noqa: F401
