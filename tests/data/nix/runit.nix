# Debian's runit (runsvdir, runsv, chpst, sv) made into a self-contained store path, as
# /work/shared/docs/TEST-INFRA.md shows: the binaries and the libraries ldd lists are copied into $out and
# patched with the host's patchelf (the sandbox is off), so the closure needs nothing from the host.
{ bbdir, bindir, libdir }:
let
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  tools = [ "runsvdir" "runsv" "chpst" "sv" ];
  src = builtins.path {
    path = bindir; name = "runit-debian-bin";
    filter = p: _t: builtins.elem (baseNameOf p) tools;
  };
  libc = builtins.path {
    path = libdir; name = "glibc-debian-lib";
    filter = p: _t: builtins.elem (baseNameOf p) [ "libc.so.6" "ld-linux-x86-64.so.2" ];
  };
  runit = builtins.derivation {
    name = "runit-2.1.2";
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    PATH = "${bb}/bin";
    args = [ "-c" ''
      mkdir -p $out/bin $out/lib
      cp ${libc}/libc.so.6 ${libc}/ld-linux-x86-64.so.2 $out/lib/
      chmod u+w $out/lib/*
      for b in ${builtins.concatStringsSep " " tools}; do
        cp ${src}/$b $out/bin/
        chmod u+w $out/bin/$b
        /usr/bin/patchelf --set-interpreter $out/lib/ld-linux-x86-64.so.2 --set-rpath $out/lib $out/bin/$b
      done
    '' ];
  };
in { inherit runit; busybox = "${bb}"; }
