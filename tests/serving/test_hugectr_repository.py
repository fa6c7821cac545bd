"""A repository written for HugeCTR's Triton backend (config.pbtxt + HPS ps.json) served
unchanged: OUTPUT0 equals ``Model.predict``; parser and lookup errors name file, line, path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from terarec.errors import ConfigError
from terarec.serving import ModelRepository
from terarec.serving.pbtxt import PbtxtError, parse_pbtxt
from tests.helpers.models import BUILDERS
from tests.helpers.synth import raw_async_dataset

pytest.importorskip("starlette", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
httpx = pytest.importorskip("httpx")

STEP = 6
CONFIG_PBTXT = """name: "dcn"
backend: "hugectr"
max_batch_size: 256
input [
  {{
    name: "DES"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }},
  {{
    name: "CATCOLUMN"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }},
  {{
    name: "ROWINDEX"
    data_type: TYPE_INT32
    dims: [ -1 ]
  }}
]
output [
  {{
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }}
]
instance_group [
  {{
    count: 1
    kind : KIND_GPU
    gpus:[0]
  }}
]
parameters [
  {{
  key: "config"
  value: {{ string_value: "{graph}" }}
  }},
  {{
  key: "gpucache"
  value: {{ string_value: "true" }}
  }},
  {{
  key: "hit_rate_threshold"
  value: {{ string_value: "0.8" }}
  }},
  {{
  key: "gpucacheper"
  value: {{ string_value: "0.5" }}
  }},
  {{
  key: "label_dim"
  value: {{ string_value: "1" }}
  }},
  {{
  key: "slots"
  value: {{ string_value: "3" }}
  }}{extra}
]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DCN trained a few steps, its files in ``files/`` and one eval batch as a request."""
    data = raw_async_dataset(tmp_path_factory.mktemp("raw"), n_train=512, n_eval=256)
    model = BUILDERS["dcn"](data)
    model.compile()
    model.fit(max_iter=STEP, display=1000, eval_interval=1000, snapshot=1000)
    files = tmp_path_factory.mktemp("files")
    model.save_params_to_files(str(files / "dcn"), STEP)
    model.graph_to_json(str(files / "dcn.json"))
    batch = next(model.eval_reader.iterate_once()).to("cpu")
    sparse = batch.sparse["data1"]
    request = (batch.dense.numpy().reshape(-1).astype(np.float32),
               sparse.keys.numpy().astype(np.int64), sparse.offsets.numpy().astype(np.int32))
    return {"files": files, "request": request, "expected": model.predict(batch).reshape(-1)}


def write_repository(root: Path, files: Path, *, prefix: str | None, ps_location: str = "root",
                     graph_in_ps: bool = True) -> Path:
    """HugeCTR's Triton layout under ``root``: ``dcn/config.pbtxt``, ``dcn/1/`` with the graph
    and weights, ``ps.json``. Paths inside are ``<prefix>/dcn/1/...`` (``prefix=None``: the real
    absolute paths). ``ps_location``: "root" (``<root>/ps.json``), "param" (a ``ps`` parameter
    of config.pbtxt) or "elsewhere" (``<root>/../ps_<name>.json``, for ``--ps``)."""
    version = root / "dcn" / "1"
    version.mkdir(parents=True)
    for f in files.iterdir():
        dst = version / f.name
        if f.is_dir():
            dst.mkdir()
            for g in f.iterdir():
                (dst / g.name).write_bytes(g.read_bytes())
        else:
            dst.write_bytes(f.read_bytes())

    def p(name: str) -> str:
        return str(version / name) if prefix is None else f"{prefix}/dcn/1/{name}"

    model: dict[str, Any] = {
        "model": "dcn", "sparse_files": [p(f"dcn0_sparse_{STEP}.model")],
        "dense_file": p(f"dcn_dense_{STEP}.model"),
        "num_of_worker_buffer_in_pool": 2, "deployed_device_list": [0], "max_batch_size": 256,
        "default_value_for_each_table": [0.0], "hit_rate_threshold": 0.9, "gpucacheper": 0.5,
        "gpucache": True, "cache_refresh_percentage_per_iteration": 0.2,
        "maxnum_catfeature_query_per_table_per_sample": [3],
        "embedding_vecsize_per_table": [8], "embedding_table_names": ["emb"],
        "label_dim": 1, "slot_num": 3}
    if graph_in_ps:
        model["network_file"] = p("dcn.json")
    ps = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 2},
          "persistent_db": {"backend": "disabled"}, "models": [model]}
    ps_path = root / "ps.json" if ps_location != "elsewhere" else root.parent / f"ps_{root.name}.json"
    ps_path.write_text(json.dumps(ps, indent=2))
    extra = ""
    if ps_location == "param":
        extra = (',\n  {\n  key: "ps"\n  value: { string_value: "'
                 + (str(ps_path) if prefix is None else f"{prefix}/ps.json") + '" }\n  }')
    (root / "dcn" / "config.pbtxt").write_text(CONFIG_PBTXT.format(graph=p("dcn.json"),
                                                                   extra=extra))
    return ps_path


@pytest.fixture
def serve_repo() -> Iterator[Any]:
    """``serve_repo(root, ps_json=None)`` starts a server (as tests/serving/conftest.py does,
    but with the default loader: the dense network is built from the graph JSON)."""
    from terarec.serving.server import ServerThread

    servers = []

    def start(root: Path, ps_json: Path | None = None) -> Any:
        srv = ServerThread(root, port=0, ps_json=ps_json, max_delay_s=0.002)
        servers.append(srv.start())
        return srv

    yield start
    for srv in servers:
        srv.stop()


def post_kserve(srv: Any, model: str, dense: np.ndarray, keys: np.ndarray,
                rowidx: np.ndarray) -> np.ndarray:
    body = {"inputs": [
        {"name": "DES", "shape": [len(dense)], "datatype": "FP32", "data": dense.tolist()},
        {"name": "CATCOLUMN", "shape": [len(keys)], "datatype": "INT64", "data": keys.tolist()},
        {"name": "ROWINDEX", "shape": [len(rowidx)], "datatype": "INT32",
         "data": rowidx.tolist()}],
        "outputs": [{"name": "OUTPUT0"}]}
    with httpx.Client(timeout=60) as c:
        r = c.post(f"http://{srv.url}/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "OUTPUT0" and out["datatype"] == "FP32"
    return np.asarray(out["data"], np.float32)


def test_absolute_paths_with_ps_flag(trained, tmp_path, serve_repo) -> None:
    root = tmp_path / "models"
    root.mkdir()
    ps = write_repository(root, trained["files"], prefix=None, ps_location="elsewhere")
    srv = serve_repo(root, ps_json=ps)
    assert srv.repository.errors == {}
    entry = srv.repository.get("dcn")
    assert entry is not None and entry.version == 1 and entry.config["layout"] == "hugectr"
    params = entry.config["inference_params"]
    assert params.max_batchsize == 256 and params.cache_size_percentage == 0.5
    assert params.hit_rate_threshold == 0.9  # ps.json wins over config.pbtxt's 0.8
    assert params.cache_refresh_percentage_per_iteration == 0.2
    assert params.volatile_db.num_partitions == 2
    got = post_kserve(srv, "dcn", *trained["request"])
    np.testing.assert_allclose(got, trained["expected"], rtol=1e-5, atol=1e-6)


def test_relocated_repository_served_from_its_folder(trained, tmp_path, serve_repo) -> None:
    """Paths written for ``/no-such-root/...`` are found under the repository; the graph comes
    from config.pbtxt's ``config`` (ps.json has no network_file); ps.json is <repo>/ps.json."""
    root = tmp_path / "models"
    root.mkdir()
    write_repository(root, trained["files"], prefix="/no-such-terarec-root", graph_in_ps=False)
    srv = serve_repo(root)
    assert srv.repository.errors == {}
    params = srv.repository.get("dcn").config["inference_params"]
    assert params.network_file == str(root / "dcn" / "1" / "dcn.json")
    assert params.sparse_model_files == [str(root / "dcn" / "1" / f"dcn0_sparse_{STEP}.model")]
    got = post_kserve(srv, "dcn", *trained["request"])
    np.testing.assert_allclose(got, trained["expected"], rtol=1e-5, atol=1e-6)


def _capture_loader(seen: list[dict[str, Any]]) -> Any:
    class _Backend:
        core = None

        def close(self) -> None:
            pass

    def load(model: str, folder: Path, config: dict[str, Any]) -> Any:
        seen.append(config)
        return _Backend()

    return load


def test_ps_parameter_in_config_pbtxt_wins(trained, tmp_path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    ps = write_repository(root, trained["files"], prefix="/no-such-terarec-root",
                          ps_location="param")
    seen: list[dict[str, Any]] = []
    repo = ModelRepository(root, _capture_loader(seen), ps_json=tmp_path / "other.json")
    assert repo.poll() == ["dcn/1"]
    assert seen[0]["ps_json"] == str(ps)
    assert seen[0]["inference_params"].deployed_devices == [0]
    repo.close()


def test_missing_ps_json_is_a_clear_error(trained, tmp_path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    ps = write_repository(root, trained["files"], prefix=None)
    ps.unlink()
    repo = ModelRepository(root, _capture_loader([]))
    with pytest.raises(ConfigError, match=r"ps\.json.*--ps PATH") as info:
        repo.load("dcn")
    assert str(root / "dcn") in str(info.value)
    assert repo.poll() == [] and "--ps PATH" in repo.errors["dcn"]
    missing = tmp_path / "nowhere" / "ps.json"
    repo = ModelRepository(root, _capture_loader([]), ps_json=missing)
    with pytest.raises(ConfigError, match="--ps") as info:
        repo.load("dcn")
    assert str(missing) in str(info.value)


def test_bad_config_pbtxt_line_is_named(trained, tmp_path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    write_repository(root, trained["files"], prefix=None)
    cfg = root / "dcn" / "config.pbtxt"
    lines = cfg.read_text().splitlines()
    lines[2] = "max_batch_size 256"  # line 3: the ':' is missing
    cfg.write_text("\n".join(lines))
    repo = ModelRepository(root, _capture_loader([]))
    with pytest.raises(PbtxtError, match=r"config\.pbtxt:3: expected ':' or '\{'"):
        repo.load("dcn")
    assert repo.poll() == [] and "config.pbtxt:3" in repo.errors["dcn"]


@pytest.mark.parametrize(("text", "line", "expected"), [
    ('name: "a"\nbackend: "hugectr"\ninput [ { name: "DES" } { name: "X" } ]', 3,
     "',' or ']'"),
    ('name: "a"\n\nparameters {\n  key: "config"\n', 4, "'}' closing the message opened at "
     "line 3"),
    ('name: "a"\nmax_batch_size: @', 2, "a field name, value"),
    ('x: "bad \\q escape"', 1, "a known string escape"),
])
def test_parser_errors_name_file_and_line(text, line, expected) -> None:
    with pytest.raises(PbtxtError) as info:
        parse_pbtxt(text, "/r/m/config.pbtxt")
    assert info.value.line == line
    assert str(info.value).startswith(f"/r/m/config.pbtxt:{line}: expected {expected}")


def test_triton_config_semantic_errors(tmp_path) -> None:
    from terarec.serving.triton_config import read_model_config

    cfg = tmp_path / "config.pbtxt"
    cfg.write_text('name: "a"\n# a comment\nname: "b"\n')
    with pytest.raises(PbtxtError, match=r"config\.pbtxt:3: expected 'name' at most once"):
        read_model_config(cfg)
    cfg.write_text('name: "m"\nmax_batch_size: "big"\n')
    with pytest.raises(PbtxtError, match=r"config\.pbtxt:2: expected max_batch_size: an integer"):
        read_model_config(cfg)
    cfg.write_text('backend: "hugectr"\noutput [\n { name: "OUT" data_type: TYPE_FP32 }\n]\n')
    with pytest.raises(PbtxtError, match=r"config\.pbtxt:3: expected an output name"):
        read_model_config(cfg).check_hugectr_tensors()
    cfg.write_text('parameters {\n key: "a"\n value { int_value: 1 }\n}\n')
    with pytest.raises(PbtxtError, match=r"config\.pbtxt:3: expected parameters 'a': a "
                       "string_value"):
        read_model_config(cfg)


def test_repository_folder_errors(trained, tmp_path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    ps = write_repository(root, trained["files"], prefix="/no-such-terarec-root")
    (root / "stray").mkdir()
    (root / "stray" / "notes.txt").write_text("x")
    (root / "py").mkdir()
    (root / "py" / "1").mkdir()
    (root / "py" / "config.pbtxt").write_text('name: "py"\nbackend: "python"\n')
    repo = ModelRepository(root, _capture_loader([]))
    assert repo.poll() == ["dcn/1"]
    assert str(root / "stray") in repo.errors["stray"] and "config.pbtxt" in repo.errors["stray"]
    assert str(root / "py") in repo.errors["py"] and '"hugectr"' in repo.errors["py"]
    with pytest.raises(ConfigError, match="stray"):
        repo.load("stray")
    repo.close()
    doc = json.loads(ps.read_text())
    doc["models"][0]["dense_file"] = "/no-such-terarec-root/dcn/1/missing_dense.model"
    ps.write_text(json.dumps(doc))
    repo = ModelRepository(root, _capture_loader([]))
    with pytest.raises(ConfigError, match="missing_dense.model") as info:
        repo.load("dcn")
    assert str(ps) in str(info.value) and "dense_file" in str(info.value)
    doc["models"][0]["model"] = "other"
    ps.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"'models' entry with \"model\": 'dcn'.*other"):
        repo.load("dcn")


def test_cli_backend_config_alias(tmp_path, monkeypatch, capsys) -> None:
    import terarec.serving.server as server_module
    from terarec.cli.main import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server_module, "serve", lambda repo, **kw: calls.append(kw))
    assert main(["serve", "--model-repository", str(tmp_path),
                 "--backend-config=hugectr,ps=/model/ps.json"]) == 0
    assert main(["serve", "--model-repository", str(tmp_path), "--ps", "/a/ps.json"]) == 0
    assert [c["ps_json"] for c in calls] == ["/model/ps.json", "/a/ps.json"]
    assert main(["serve", "--model-repository", str(tmp_path),
                 "--backend-config", "python,shm-default-byte-size=1"]) == 1
    assert "hugectr,ps=PATH" in capsys.readouterr().err
