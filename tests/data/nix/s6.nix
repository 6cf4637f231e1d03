# Debian's s6 made into a self-contained store path the way runit.nix does it (binaries and the libraries
# ldd lists copied into $out, patched with the host's patchelf). Debian builds s6 with /usr/bin/... paths
# compiled in (s6-svscan runs /usr/bin/s6-supervise, s6-svc runs /usr/bin/s6-svlisten1, libs6 runs
# /usr/bin/s6-ftrigrd), so $out also has usr/bin -> ../bin, which the image links to /usr/bin.
# nixpkgs' s6 has store paths compiled in and needs none of this.
{ bbdir, bindir, libdir }:
let
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  tools = [ "s6-svscan" "s6-supervise" "s6-svc" "s6-svwait" "s6-svscanctl" "s6-applyuidgid" "s6-svlisten1" "s6-ftrigrd" ];
  libs = [ "libc.so.6" "ld-linux-x86-64.so.2" "libskarnet.so.2.13" "libs6.so.2.11" ];
  src = builtins.path {
    path = bindir; name = "s6-debian-bin";
    filter = p: _t: builtins.elem (baseNameOf p) tools;
  };
  libc = builtins.path {
    path = libdir; name = "s6-debian-lib";
    filter = p: _t: builtins.any (l: builtins.substring 0 (builtins.stringLength l) (baseNameOf p) == l) libs;
  };
in {
  s6 = builtins.derivation {
    name = "s6-2.11";
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    PATH = "${bb}/bin";
    args = [ "-c" ''
      mkdir -p $out/bin $out/lib $out/usr
      ln -s ../bin $out/usr/bin
      for l in ${builtins.concatStringsSep " " libs}; do cp -L ${libc}/$l $out/lib/$l; chmod u+w $out/lib/$l; done
      for l in $out/lib/libskarnet.so.2.13 $out/lib/libs6.so.2.11; do /usr/bin/patchelf --set-rpath $out/lib $l; done
      for b in ${builtins.concatStringsSep " " tools}; do
        cp ${src}/$b $out/bin/
        chmod u+w $out/bin/$b
        /usr/bin/patchelf --set-interpreter $out/lib/ld-linux-x86-64.so.2 --set-rpath $out/lib $out/bin/$b
      done
    '' ];
  };
  busybox = "${bb}";
}
