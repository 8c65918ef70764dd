from caltrain.cli.main import main

raise SystemExit(main())
