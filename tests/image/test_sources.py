"""Only tracked files enter the server layer, as staged in git's index; secret-looking files never do."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from image_helpers import git, make_checkout, small_config
from minibuild.config import Config
from minibuild.image import SourceFileError, build_images


def _server_layer_names(cfg: Config, res: dict, store) -> list[str]:
    oci = cfg.path(cfg.images.out_dir) / "oci" / "blobs" / "sha256"
    layer = json.loads((oci / res["server"]["digest"].split(":")[1]).read_bytes())["layers"][-1]["digest"]
    with tarfile.open(fileobj=io.BytesIO(store.read_blob(layer.split(":")[1])), mode="r:gz") as t:
        return t.getnames()


def test_untracked_files_stay_out_and_staged_content_goes_in(tmp_path, small_lock, session_store, capsys):
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    pkg = checkout / "python" / "mini_vllm"
    (pkg / ".env").write_text("HF_TOKEN=hf_planted_secret\n")              # untracked: never packed
    (pkg / "credentials").write_text("[default]\naws_secret_access_key=planted\n")
    (pkg / "scratch_notes.py").write_text("print('not part of the project')\n")
    cli = pkg / "cli.py"
    staged = cli.read_text() + "\n# staged change\n"
    cli.write_text(staged)
    git(checkout, "add", "python/mini_vllm/cli.py")
    cli.write_text(staged + "# unstaged change\n")                      # the working tree moves on
    capsys.readouterr()
    res = build_images(cfg, stage="server", store=session_store)
    err = capsys.readouterr().err
    assert "differ from git's index" in err and "python/mini_vllm/scratch_notes.py" in err
    names = _server_layer_names(cfg, res, session_store)
    site = cfg.images.profiles["local"].site_packages
    assert f"{site}/mini_vllm/cli.py" in names
    assert not any(n.endswith(("/.env", "/credentials", "/scratch_notes.py")) for n in names)
    layer = json.loads((cfg.path(cfg.images.out_dir) / "oci" / "blobs" / "sha256"
                        / res["server"]["digest"].split(":")[1]).read_bytes())["layers"][-1]["digest"]
    with tarfile.open(fileobj=io.BytesIO(session_store.read_blob(layer.split(":")[1])), mode="r:gz") as t:
        packed = t.extractfile(f"{site}/mini_vllm/cli.py").read().decode()   # type: ignore[union-attr]
    assert packed == staged                                              # the index's bytes, not the tree's
    ann = json.loads((cfg.path(cfg.images.out_dir) / "oci" / "blobs" / "sha256"
                      / res["server"]["digest"].split(":")[1]).read_bytes())["annotations"]
    assert ann["org.opencontainers.image.revision"].endswith("+dirty")   # the index differs from HEAD


@pytest.mark.parametrize("name", [".env", "deploy.pem", ".netrc", "credentials"])
def test_tracked_secret_looking_file_is_refused_by_name(tmp_path, small_lock, session_store, name):
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    planted = checkout / "python" / "mini_vllm" / "api" / name
    planted.write_text("not-really-a-secret\n")
    git(checkout, "add", "-f", f"python/mini_vllm/api/{name}")
    with pytest.raises(SourceFileError, match=rf"python/mini_vllm/api/{name.replace('.', '[.]')}: refused - a "
                                              r"secret-looking file \(name matches .*git rm --cached"):
        build_images(cfg, stage="server", store=session_store)
    assert not (cfg.path(cfg.images.out_dir) / "server.json").exists()


def test_outside_git_the_build_says_why(tmp_path, small_lock, session_store):
    checkout = make_checkout(tmp_path / "repo")
    cfg = small_config(checkout, small_lock)
    import shutil

    shutil.rmtree(checkout / ".git")
    with pytest.raises(SourceFileError, match="is not a git checkout .* clone the repository"):
        build_images(cfg, stage="server", store=session_store)
