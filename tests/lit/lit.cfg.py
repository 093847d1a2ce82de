# lit configuration for lmc's compiler tests. ctest passes the lmc binary
# and the output folder: lit.py --param lmc=PATH --param out=DIR tests/lit
import os
import lit.formats

config.name = "lmc"
config.test_format = lit.formats.ShTest(True)
config.suffixes = [".lm"]
config.excludes = ["inputs"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = lit_config.params.get("out", os.path.join(config.test_source_root, "Output"))
root = os.path.dirname(os.path.dirname(config.test_source_root))
config.substitutions.append(("%lmc", lit_config.params["lmc"]))
config.substitutions.append(("%models", os.path.join(root, "models")))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "inputs")))
config.environment["PATH"] = "/usr/lib/llvm-14/bin:" + os.environ.get("PATH", "")
