# Two closures for `nixfly diff` tests, built by offline Nix from Debian's static busybox.
# variant "old" and "new" differ in exactly: libgreet 2.1 → 2.2 (a version change), oldhelper-0.9
# (only in old), newhelper-1.4 (only in new) and hello-app-1 (same name and version, other inputs:
# rebuilt). common-data-1.0 and busybox-static are the same store paths in both.
{ bbdir, variant ? "old", system ? builtins.currentSystem }:
let
  isNew = variant == "new";
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  mk = name: script: builtins.derivation {
    inherit name system;
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
    PATH = "${bb}/bin";
  };
  common = mk "common-data-1.0" ''
    mkdir -p $out/share/common
    i=0; while [ $i -lt 40 ]; do echo "line $i of shared data" >> $out/share/common/data.txt; i=$((i+1)); done
    ln -s data.txt $out/share/common/link.txt
  '';
  lib = mk "libgreet-${if isNew then "2.2" else "2.1"}" ''
    mkdir -p $out/lib $out/share/doc
    echo "hello from libgreet ${if isNew then "2.2, with a longer greeting than before" else "2.1"}" > $out/lib/greeting.txt
    echo "uses ${common}/share/common/data.txt" > $out/share/doc/README
  '';
  oldhelper = mk "oldhelper-0.9" ''
    mkdir -p $out/bin
    printf '#!${bb}/bin/sh\necho old helper\n' > $out/bin/oldhelper
    chmod 555 $out/bin/oldhelper
  '';
  newhelper = mk "newhelper-1.4" ''
    mkdir -p $out/bin $out/share/newhelper
    printf '#!${bb}/bin/sh\necho new helper\n' > $out/bin/newhelper
    chmod 555 $out/bin/newhelper
    i=0; while [ $i -lt 300 ]; do echo "table row $i: $i $i $i" >> $out/share/newhelper/table.txt; i=$((i+1)); done
    ln -s ../share/newhelper/table.txt $out/bin/table
  '';
  helper = if isNew then newhelper else oldhelper;
  app = mk "hello-app-1" ''
    mkdir -p $out/bin
    cat > $out/bin/hello <<EOS
    #!${bb}/bin/sh
    cat ${lib}/lib/greeting.txt
    exec ${helper}/bin/${if isNew then "newhelper" else "oldhelper"}
    EOS
    chmod 555 $out/bin/hello
  '';
in { inherit app lib common oldhelper newhelper; }
