"""The HTTP front: serves kube-proxy List & Watch from the cache and passes everything else through."""
