# A small closure unique to one test run (the marker is in every path), so tests may delete it from the
# shared store and build it back from a binary cache. Nothing in it refers to the busybox import that
# builds it: app -> data, app -> sh (a copy of the static busybox).
{ bbdir, marker, system ? builtins.currentSystem }:
let
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  mk = name: script: builtins.derivation {
    inherit name system;
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
    PATH = "${bb}/bin";
  };
  sh = mk "bc-sh-${marker}" ''
    mkdir -p $out/bin
    cp ${bb}/bin/busybox $out/bin/busybox
    ln -s busybox $out/bin/sh
    echo ${marker} > $out/marker
  '';
  data = mk "bc-data-${marker}" ''
    mkdir -p $out/share/d/sub $out/etc/ssl/certs $out/lib
    echo "${marker}" > $out/share/d/a.txt
    : > $out/share/d/empty
    printf 'x%.0s' $(seq 1 5000) > $out/share/d/sub/big.txt
    echo run > $out/share/d/tool; chmod 555 $out/share/d/tool
    ln -s a.txt $out/share/d/link
    ln -s ../share/d $out/lib/dlink
    mkdir -p "$out/share/a-directory-name-that-is-rather-long-to-need-more-than-one-hundred-bytes/and-then-some-more-of-it-too"
    echo deep > "$out/share/a-directory-name-that-is-rather-long-to-need-more-than-one-hundred-bytes/and-then-some-more-of-it-too/f"
    echo "-----BEGIN CERTIFICATE-----" > $out/etc/ssl/certs/ca-bundle.crt
  '';
  app = mk "bc-app-${marker}" ''
    mkdir -p $out/bin $out/etc
    cat > $out/bin/hello <<EOS
    #!${sh}/bin/sh
    echo "hello from the cache ${marker}"
    ${sh}/bin/busybox cat ${data}/share/d/a.txt
    EOS
    chmod 555 $out/bin/hello
    echo ${data} > $out/etc/data-path
  '';
in { inherit sh data app; }
