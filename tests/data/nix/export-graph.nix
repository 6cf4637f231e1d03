# exportReferencesGraph as a Nix build would use it: the classic text file and the __structuredAttrs JSON.
{ app, bb }:
let
  appPath = builtins.storePath app;
  bbPath = builtins.storePath bb;
in {
  classic = builtins.derivation {
    name = "graph-classic";
    system = builtins.currentSystem;
    builder = "${bbPath}/bin/sh";
    args = [ "-c" "${bbPath}/bin/cp graph $out" ];
    exportReferencesGraph = [ "graph" appPath ];
  };
  structured = builtins.derivation {
    name = "graph-structured";
    system = builtins.currentSystem;
    builder = "${bbPath}/bin/sh";
    # With structured attrs $out is not in the environment: read it from .attrs.json.
    args = [ "-c" "${bbPath}/bin/cp .attrs.json $(${bbPath}/bin/sed -n 's|.*\"out\": *\"\\([^\"]*\\)\".*|\\1|p' .attrs.json)" ];
    __structuredAttrs = true;
    exportReferencesGraph = { graph = [ appPath ]; };
  };
}
