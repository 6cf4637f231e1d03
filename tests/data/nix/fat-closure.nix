# A runtime closure with the usual dead weight, for nixfly inspect's suggestions: a .dev output (headers),
# a man-page output, static libraries, and a compiler that a script still names. Offline, busybox only.
{ bbdir }:
let
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
    PATH = "${bb}/bin";
  };
  fill = file: kb: "mkdir -p $(dirname ${file}); i=0; while [ $i -lt ${toString kb} ]; do printf '%01024d' $i >> ${file}; i=$((i+1)); done";
  gcc = mk "gcc-12.3.0" ''
    ${fill "$out/libexec/gcc/cc1" 300}
    mkdir -p $out/bin; echo '#!/bin/sh' > $out/bin/gcc
  '';
  zlibDev = mk "zlib-1.3-dev" ''
    ${fill "$out/include/zlib.h" 120}
    ${fill "$out/include/zconf.h" 40}
  '';
  opensslMan = mk "openssl-3.0.13-man" ''
    ${fill "$out/share/man/man3/SSL_new.3" 90}
  '';
  staticLibs = mk "libfoo-static-1.0" ''
    ${fill "$out/lib/libfoo.a" 80}
  '';
  app = mk "fat-app-1.0" ''
    mkdir -p $out/bin $out/share
    echo "#!${bb}/bin/sh" > $out/bin/fat
    echo "# built with ${gcc}/bin/gcc" >> $out/bin/fat
    echo "cflags -I${zlibDev}/include" > $out/share/build-info
    echo "see ${opensslMan}/share/man" > $out/share/docs-pointer
    ln -s ${staticLibs}/lib/libfoo.a $out/share/libfoo.a
  '';
in { inherit app gcc zlibDev opensslMan staticLibs; }
