"""conf/identity.yaml parses into IdentityConfig; bad config names the key path."""
from __future__ import annotations

import copy

import pytest

from cdp.identity import IdentityConfig
from cdp.runtime.config import ConfigError, load_yaml, parse_file


def test_shipped_config_parses(conf_dir):
    config = parse_file(conf_dir / "identity.yaml", IdentityConfig.from_dict)
    assert set(config.type_names) == {"member_id", "crm_id", "wechat_unionid", "phone", "email", "wechat_openid",
                                      "order_id", "device_id", "cookie_id"}
    assert config.type("member_id").limit == 1
    assert config.type("phone").normalizer == "phone"
    assert "+8613800000000" in config.type("phone").blocked.values
    assert config.engine == "auto"
    assert config.survivorship.rule("name") == "source_priority"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["types"]["phone"].pop("limit"), r"types\.phone\.limit: required key is missing"),
    (lambda d: d["types"]["email"].update(limit=0), r"types\.email\.limit: must be >= 1"),
    (lambda d: d["types"]["email"].update(pattern="(unclosed"), r"types\.email\.pattern: invalid regular expression"),
    (lambda d: d["blocked"].update(patterns=["[x"]), r"blocked\.patterns\[0\]: invalid regular expression"),
    (lambda d: d.update(engine="spark"), r"engine: expected one of"),
    (lambda d: d["survivorship"]["attributes"].update(name="loudest"), r"survivorship\.attributes\.name: unknown rule"),
    (lambda d: d["types"]["phone"].update(prio=3), r"types\.phone: unknown keys \['prio'\]"),
])
def test_bad_config_names_the_key(conf_dir, tmp_path, change, message):
    data = copy.deepcopy(load_yaml(conf_dir / "identity.yaml"))
    change(data)
    with pytest.raises(ValueError, match=message):
        IdentityConfig.from_dict(data)
    import yaml

    path = tmp_path / "identity.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")):
        parse_file(path, IdentityConfig.from_dict)


def test_fingerprint_tracks_what_decides_components(conf_dir):
    data = load_yaml(conf_dir / "identity.yaml")
    base = IdentityConfig.from_dict(data)
    changed_limit = copy.deepcopy(data)
    changed_limit["types"]["email"]["limit"] = 4
    changed_engine = copy.deepcopy(data)
    changed_engine["engine"] = "dataframe"
    assert IdentityConfig.from_dict(changed_limit).fingerprint() != base.fingerprint()
    assert IdentityConfig.from_dict(changed_engine).fingerprint() == base.fingerprint()
