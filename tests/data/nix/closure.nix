# A small real closure built by offline Nix from Debian's static busybox: no nixpkgs needed.
# lib <- tool <- app (+ cacert, + a shared "common" data path). References are real (scanned hashes).
{ bbdir, appVersion ? "1", greeting ? "hello from nixfly", system ? builtins.currentSystem }:
let
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
  lib = mk "libgreet-2.1" ''
    mkdir -p $out/lib $out/share/doc
    echo "${greeting}" > $out/lib/greeting.txt
    echo "uses ${common}/share/common/data.txt" > $out/share/doc/README
    mkdir -p "$out/share/a-very-long-directory-name-that-goes-on-and-on-and-on/and-deeper-still-more-than-one-hundred-bytes-in-total"
    echo deep > "$out/share/a-very-long-directory-name-that-goes-on-and-on-and-on/and-deeper-still-more-than-one-hundred-bytes-in-total/file.txt"
  '';
  cacert = mk "nss-cacert-3.0" ''
    mkdir -p $out/etc/ssl/certs
    echo "-----BEGIN CERTIFICATE-----" > $out/etc/ssl/certs/ca-bundle.crt
    echo "-----END CERTIFICATE-----" >> $out/etc/ssl/certs/ca-bundle.crt
  '';
  tool = mk "greet-tool-0.3" ''
    mkdir -p $out/bin
    cat > $out/bin/greet <<EOS
    #!${bb}/bin/sh
    cat ${lib}/lib/greeting.txt
    EOS
    chmod 555 $out/bin/greet
  '';
  app = mk "hello-app-${appVersion}" ''
    mkdir -p $out/bin $out/etc
    cat > $out/bin/hello <<EOS
    #!${bb}/bin/sh
    echo "app version ${appVersion}"
    ${tool}/bin/greet
    echo "user=\$(${bb}/bin/id -u) cwd=\$(${bb}/bin/pwd) APP_ECHO_ME=\$APP_ECHO_ME"
    echo "args: \$*"
    echo "cert: \$SSL_CERT_FILE"
    EOS
    chmod 555 $out/bin/hello
    ln -s ${cacert}/etc/ssl $out/etc/ssl-link
    echo ${common} > $out/etc/common-path
  '';
in { inherit app tool lib common cacert; }
