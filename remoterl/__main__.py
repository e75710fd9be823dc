from remoterl_ray.cli import main

main()
